/*!
 * site.js — progressive enhancements for www.foobar.com.
 *
 * Served as /static/site.<fingerprint>.js: the name carries the first 8 hex digits of
 * the SHA-256 of these bytes. After editing this file, run
 * `python3 tools/site/fingerprint.py` to rename it and update the pages that load it.
 *
 * The page works without it; this only makes it nicer:
 *
 *   - relativeTimes: "3 minutes ago" for every <time>, the exact time on hover,
 *     refreshed while the page is visible;
 *   - lightbox: photos open over the page, with the keyboard, swipes, a caption and
 *     the neighbours preloaded;
 *   - postForm: inline validation, a character counter, Ctrl/Cmd+Enter to post and a
 *     remembered name and draft (localStorage);
 *   - images: lazy images fade in when they arrive, broken ones show a placeholder;
 *   - newPosts: a post that /static/app.js adds is briefly highlighted;
 *   - shortcuts: "/" jumps to the form, "g h" to the top, "?" lists them;
 *   - connectivity: a notice when the browser goes offline and back;
 *   - backToTop: a button after scrolling down a long page;
 *   - navigation: the current page's link is marked for assistive technology.
 *
 * Rules it keeps: it never throws out of a feature (each one is started in its own
 * try/catch and reports to the console), it makes no network request except for
 * same-origin images it is asked to show, it never writes to #status (the page's own
 * script reports there) and it never stops a valid form from submitting.
 */
(function () {
  "use strict";

  // ---------------------------------------------------------------------------------
  // Utilities
  // ---------------------------------------------------------------------------------

  /** The first element matching `selector` under `root` (default: the document). */
  function $(selector, root) {
    return (root || document).querySelector(selector);
  }

  /** Every element matching `selector` under `root`, as an array. */
  function $$(selector, root) {
    return Array.prototype.slice.call((root || document).querySelectorAll(selector));
  }

  /** Adds a listener and returns a function that removes it. */
  function on(target, type, handler, options) {
    target.addEventListener(type, handler, options || false);
    return function off() {
      target.removeEventListener(type, handler, options || false);
    };
  }

  /** Calls `fn` once, `wait` ms after the last of a burst of calls. */
  function debounce(fn, wait) {
    var timer = 0;
    function debounced() {
      var self = this;
      var args = arguments;
      clearTimeout(timer);
      timer = setTimeout(function () {
        timer = 0;
        fn.apply(self, args);
      }, wait);
    }
    debounced.flush = function () {
      if (timer) {
        clearTimeout(timer);
        timer = 0;
        fn();
      }
    };
    debounced.cancel = function () {
      clearTimeout(timer);
      timer = 0;
    };
    return debounced;
  }

  /** Calls `fn` at most once per animation frame, with the latest arguments. */
  function rafThrottle(fn) {
    var queued = false;
    var lastArgs = null;
    var schedule = window.requestAnimationFrame
      ? function (cb) { window.requestAnimationFrame(cb); }
      : function (cb) { setTimeout(cb, 16); };
    return function throttled() {
      lastArgs = arguments;
      if (queued) return;
      queued = true;
      schedule(function () {
        queued = false;
        fn.apply(null, lastArgs);
      });
    };
  }

  function clamp(value, min, max) {
    return Math.min(max, Math.max(min, value));
  }

  /** Creates an element with attributes, properties and children. */
  function h(tag, attrs, children) {
    var el = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (key) {
        var value = attrs[key];
        if (value === null || value === undefined || value === false) return;
        if (key === "className") el.className = value;
        else if (key === "text") el.textContent = value;
        else if (key.slice(0, 2) === "on" && typeof value === "function") {
          el.addEventListener(key.slice(2).toLowerCase(), value);
        } else if (value === true) el.setAttribute(key, "");
        else el.setAttribute(key, String(value));
      });
    }
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      el.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return el;
  }

  /** Whether `url` (relative or absolute) is on this page's origin. */
  function sameOrigin(url) {
    try {
      return new URL(url, window.location.href).origin === window.location.origin;
    } catch (err) {
      return false;
    }
  }

  /** Whether the user is typing somewhere, so single-key shortcuts must not fire. */
  function isTyping(target) {
    if (!target || !target.tagName) return false;
    var tag = target.tagName.toLowerCase();
    return tag === "input" || tag === "textarea" || tag === "select" || target.isContentEditable;
  }

  function prefersReducedMotion() {
    return !!(window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches);
  }

  /**
   * localStorage that never throws: private modes, full quotas and disabled storage
   * just make it forget.
   */
  var store = (function () {
    var prefix = "foobar:";
    var backend = null;
    try {
      backend = window.localStorage;
      var probe = prefix + "probe";
      backend.setItem(probe, "1");
      backend.removeItem(probe);
    } catch (err) {
      backend = null;
    }
    return {
      available: backend !== null,
      get: function (key, fallback) {
        if (!backend) return fallback;
        try {
          var raw = backend.getItem(prefix + key);
          return raw === null ? fallback : JSON.parse(raw);
        } catch (err) {
          return fallback;
        }
      },
      set: function (key, value) {
        if (!backend) return false;
        try {
          backend.setItem(prefix + key, JSON.stringify(value));
          return true;
        } catch (err) {
          return false;
        }
      },
      remove: function (key) {
        if (!backend) return;
        try {
          backend.removeItem(prefix + key);
        } catch (err) {
          /* nothing to forget */
        }
      },
    };
  })();

  /** Formats numbers the reader's way ("1,953"), or plainly without Intl. */
  var formatNumber = (function () {
    try {
      var nf = new Intl.NumberFormat();
      return function (n) { return nf.format(n); };
    } catch (err) {
      return function (n) { return String(n); };
    }
  })();

  // ---------------------------------------------------------------------------------
  // Toasts: short, polite notices in a corner (also used by other features)
  // ---------------------------------------------------------------------------------

  var toast = (function () {
    var region = null;

    function ensureRegion() {
      if (region && document.body.contains(region)) return region;
      region = h("div", {
        className: "toast-region",
        role: "status",
        "aria-live": "polite",
        "aria-atomic": "false",
      });
      document.body.appendChild(region);
      return region;
    }

    /** Shows `message` for `ms` milliseconds; `kind` is "" or "warning". */
    function show(message, kind, ms) {
      var el = h("div", { className: "toast" + (kind ? " toast-" + kind : ""), text: message });
      ensureRegion().appendChild(el);
      var duration = typeof ms === "number" ? ms : 4000;
      var dismiss = function () {
        if (!el.parentNode) return;
        el.classList.add("is-leaving");
        setTimeout(function () {
          if (el.parentNode) el.parentNode.removeChild(el);
        }, prefersReducedMotion() ? 0 : 220);
      };
      if (duration > 0) setTimeout(dismiss, duration);
      on(el, "click", dismiss);
      return dismiss;
    }

    return { show: show };
  })();

  // ---------------------------------------------------------------------------------
  // Relative times
  // ---------------------------------------------------------------------------------

  var relativeTimes = (function () {
    var SECOND = 1000;
    var MINUTE = 60 * SECOND;
    var HOUR = 60 * MINUTE;
    var DAY = 24 * HOUR;
    var WEEK = 7 * DAY;
    var MONTH = 30 * DAY;
    var YEAR = 365 * DAY;

    var rtf = null;
    try {
      if (window.Intl && Intl.RelativeTimeFormat) {
        rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "long" });
      }
    } catch (err) {
      rtf = null;
    }

    var absolute = null;
    try {
      absolute = new Intl.DateTimeFormat(undefined, {
        year: "numeric",
        month: "short",
        day: "numeric",
        hour: "2-digit",
        minute: "2-digit",
      });
    } catch (err) {
      absolute = null;
    }

    /** English fallback for browsers without Intl.RelativeTimeFormat. */
    function plain(value, unit) {
      var n = Math.abs(value);
      if (n === 0 && unit === "second") return "just now";
      var word = n === 1 ? unit : unit + "s";
      return value < 0 ? n + " " + word + " ago" : "in " + n + " " + word;
    }

    function phrase(value, unit) {
      if (rtf) {
        try {
          return rtf.format(value, unit);
        } catch (err) {
          /* fall through */
        }
      }
      return plain(value, unit);
    }

    /**
     * "just now", "5 minutes ago", "yesterday", "3 weeks ago"... for the time `then`
     * seen at `now` (both in ms since the epoch).
     */
    function describe(then, now) {
      var diff = then - now; // negative in the past
      var abs = Math.abs(diff);
      if (abs < 45 * SECOND) return rtf ? phrase(0, "second") : "just now";
      if (abs < 45 * MINUTE) return phrase(Math.round(diff / MINUTE), "minute");
      if (abs < 22 * HOUR) return phrase(Math.round(diff / HOUR), "hour");
      if (abs < 6 * DAY) return phrase(Math.round(diff / DAY), "day");
      if (abs < 4 * WEEK) return phrase(Math.round(diff / WEEK), "week");
      if (abs < 11 * MONTH) return phrase(Math.round(diff / MONTH), "month");
      return phrase(Math.round(diff / YEAR), "year");
    }

    /** When the next refresh could change what `then` reads as. */
    function refreshIn(then, now) {
      var abs = Math.abs(then - now);
      if (abs < MINUTE) return 10 * SECOND;
      if (abs < HOUR) return 30 * SECOND;
      if (abs < DAY) return 5 * MINUTE;
      return HOUR;
    }

    /** The instant a <time> names: its datetime attribute, or else its text. */
    function instantOf(el) {
      var source = el.getAttribute("datetime") || el.getAttribute("data-original") || el.textContent;
      if (!source) return NaN;
      var trimmed = source.trim();
      // "2024-05-01 10:00:00" (a space instead of the T) is common in server output.
      if (/^\d{4}-\d{2}-\d{2} \d/.test(trimmed)) trimmed = trimmed.replace(" ", "T");
      return Date.parse(trimmed);
    }

    function update(el, now) {
      var then = instantOf(el);
      if (isNaN(then)) return Infinity;
      if (!el.hasAttribute("data-original")) {
        el.setAttribute("data-original", el.getAttribute("datetime") || el.textContent.trim());
      }
      if (!el.hasAttribute("datetime")) el.setAttribute("datetime", new Date(then).toISOString());
      var text = describe(then, now);
      if (el.textContent !== text) el.textContent = text;
      var exact = absolute ? absolute.format(new Date(then)) : new Date(then).toString();
      if (el.title !== exact) el.title = exact;
      return refreshIn(then, now);
    }

    var timer = 0;

    function refresh(root) {
      var now = Date.now();
      var soonest = Infinity;
      $$("time", root).forEach(function (el) {
        if (el.hasAttribute("data-no-relative")) return;
        soonest = Math.min(soonest, update(el, now));
      });
      return soonest;
    }

    function schedule() {
      clearTimeout(timer);
      var next = refresh(document);
      if (next !== Infinity && !document.hidden) {
        timer = setTimeout(schedule, next);
      }
    }

    function init() {
      schedule();
      on(document, "visibilitychange", function () {
        if (!document.hidden) schedule();
        else clearTimeout(timer);
      });
    }

    return { init: init, describe: describe, refresh: refresh };
  })();

  // ---------------------------------------------------------------------------------
  // Lightbox
  // ---------------------------------------------------------------------------------

  var lightbox = (function () {
    var root = null;
    var image = null;
    var caption = null;
    var count = null;
    var prevButton = null;
    var nextButton = null;
    var closeButton = null;
    var spinner = null;

    var items = [];
    var index = 0;
    var opener = null;
    var offs = [];
    var loadToken = 0;
    var preloaded = Object.create(null);

    /** The photos in `group`, in page order: [{ href, caption, alt, trigger }]. */
    function collect(group) {
      return $$("a[data-lightbox]").filter(function (a) {
        return (a.getAttribute("data-lightbox") || "") === group && sameOrigin(a.href);
      }).map(function (a) {
        var img = $("img", a);
        var figure = a.closest ? a.closest("figure") : null;
        var figcaption = figure ? $("figcaption", figure) : null;
        var text = a.getAttribute("data-caption") ||
          (figcaption ? figcaption.textContent.trim() : "") ||
          (img ? img.alt : "");
        return { href: a.href, caption: text, alt: img ? img.alt : text, trigger: a };
      });
    }

    function build() {
      if (root) return;
      spinner = h("div", { className: "lightbox-spinner", "aria-hidden": "true", hidden: true });
      image = h("img", { className: "lightbox-image", alt: "", decoding: "async" });
      caption = h("span", { className: "lightbox-text" });
      count = h("span", { className: "lightbox-count", "aria-live": "polite" });
      closeButton = h("button", {
        type: "button",
        className: "lightbox-button lightbox-close",
        "aria-label": "Close",
        title: "Close (Esc)",
        text: "\u00d7",
      });
      prevButton = h("button", {
        type: "button",
        className: "lightbox-button lightbox-prev",
        "aria-label": "Previous photo",
        title: "Previous (\u2190)",
        text: "\u2039",
      });
      nextButton = h("button", {
        type: "button",
        className: "lightbox-button lightbox-next",
        "aria-label": "Next photo",
        title: "Next (\u2192)",
        text: "\u203a",
      });
      root = h("div", {
        className: "lightbox",
        role: "dialog",
        "aria-modal": "true",
        "aria-label": "Photo viewer",
        tabindex: "-1",
        hidden: true,
      }, [
        h("figure", { className: "lightbox-figure" }, [
          image,
          h("figcaption", { className: "lightbox-caption" }, [caption, count]),
        ]),
        spinner,
        prevButton,
        nextButton,
        closeButton,
      ]);
      document.body.appendChild(root);

      on(closeButton, "click", close);
      on(prevButton, "click", function () { go(index - 1); });
      on(nextButton, "click", function () { go(index + 1); });
      // A click on the backdrop (not on the photo or a button) closes.
      on(root, "click", function (event) {
        if (event.target === root) close();
      });
      on(image, "load", function () {
        spinner.hidden = true;
      });
      on(image, "error", function () {
        spinner.hidden = true;
        caption.textContent = "This photo could not be loaded.";
      });
      swipe(image, function (direction) {
        go(index + direction);
      });
    }

    /** Calls back with -1 or +1 on a horizontal swipe over `el`. */
    function swipe(el, callback) {
      var startX = 0;
      var startY = 0;
      var active = false;
      if (!window.PointerEvent) return;
      on(el, "pointerdown", function (event) {
        if (event.pointerType === "mouse") return;
        active = true;
        startX = event.clientX;
        startY = event.clientY;
      });
      on(el, "pointerup", function (event) {
        if (!active) return;
        active = false;
        var dx = event.clientX - startX;
        var dy = event.clientY - startY;
        if (Math.abs(dx) > 50 && Math.abs(dx) > Math.abs(dy) * 1.5) {
          callback(dx < 0 ? 1 : -1);
        }
      });
      on(el, "pointercancel", function () {
        active = false;
      });
    }

    function preload(i) {
      var item = items[i];
      if (!item || preloaded[item.href] || !sameOrigin(item.href)) return;
      preloaded[item.href] = true;
      var img = new Image();
      img.decoding = "async";
      img.src = item.href;
    }

    function show(i) {
      index = clamp(i, 0, items.length - 1);
      var item = items[index];
      var token = ++loadToken;
      spinner.hidden = false;
      image.alt = item.alt || "";
      caption.textContent = item.caption || "";
      count.textContent = items.length > 1 ? index + 1 + " / " + items.length : "";
      prevButton.disabled = index === 0;
      nextButton.disabled = index === items.length - 1;
      prevButton.hidden = nextButton.hidden = items.length < 2;
      // Only ever same-origin: collect() filtered, this checks again.
      if (sameOrigin(item.href) && image.getAttribute("src") !== item.href) {
        image.src = item.href;
      }
      if (image.complete && token === loadToken) spinner.hidden = true;
      preload(index + 1);
      preload(index - 1);
    }

    function go(i) {
      if (!root || root.hidden || i < 0 || i >= items.length) return;
      show(i);
    }

    function focusables() {
      return $$("button:not([disabled]):not([hidden])", root);
    }

    function onKey(event) {
      if (!root || root.hidden) return;
      switch (event.key) {
        case "Escape":
        case "Esc":
          event.preventDefault();
          close();
          break;
        case "ArrowLeft":
          event.preventDefault();
          go(index - 1);
          break;
        case "ArrowRight":
          event.preventDefault();
          go(index + 1);
          break;
        case "Home":
          event.preventDefault();
          go(0);
          break;
        case "End":
          event.preventDefault();
          go(items.length - 1);
          break;
        case "Tab": {
          // Keep focus inside the dialog.
          var list = focusables();
          if (list.length === 0) {
            event.preventDefault();
            return;
          }
          var first = list[0];
          var last = list[list.length - 1];
          if (event.shiftKey && document.activeElement === first) {
            event.preventDefault();
            last.focus();
          } else if (!event.shiftKey && document.activeElement === last) {
            event.preventDefault();
            first.focus();
          } else if (!root.contains(document.activeElement)) {
            event.preventDefault();
            first.focus();
          }
          break;
        }
        default:
          break;
      }
    }

    function open(group, trigger) {
      items = collect(group);
      if (items.length === 0) return false;
      var start = 0;
      items.forEach(function (item, i) {
        if (item.trigger === trigger) start = i;
      });
      build();
      opener = trigger || document.activeElement;
      root.hidden = false;
      document.documentElement.classList.add("has-lightbox");
      show(start);
      // Let the browser lay it out before fading in.
      setTimeout(function () {
        if (root && !root.hidden) root.classList.add("is-open");
      }, 16);
      offs.push(on(document, "keydown", onKey, true));
      closeButton.focus();
      return true;
    }

    function close() {
      if (!root || root.hidden) return;
      root.classList.remove("is-open");
      root.hidden = true;
      document.documentElement.classList.remove("has-lightbox");
      offs.forEach(function (off) { off(); });
      offs = [];
      loadToken++;
      if (opener && typeof opener.focus === "function" && document.body.contains(opener)) {
        opener.focus();
      }
      opener = null;
    }

    function init() {
      on(document, "click", function (event) {
        if (event.defaultPrevented || event.button !== 0) return;
        if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
        var link = event.target && event.target.closest ? event.target.closest("a[data-lightbox]") : null;
        if (!link || !sameOrigin(link.href)) return;
        if (open(link.getAttribute("data-lightbox") || "", link)) event.preventDefault();
      });
    }

    return { init: init, open: open, close: close };
  })();

  // ---------------------------------------------------------------------------------
  // The post form
  // ---------------------------------------------------------------------------------

  var postForm = (function () {
    var NEAR_LIMIT = 0.9;
    var DRAFT_KEY = "draft";
    var AUTHOR_KEY = "author";

    /** What is wrong with a field's value, or "" when nothing is. */
    function problem(field) {
      var value = field.value || "";
      var label = field.getAttribute("data-label") || field.name || "This field";
      if (field.required && value.length > 0 && value.trim().length === 0) {
        return label + " cannot be only spaces.";
      }
      var max = field.maxLength > 0 ? field.maxLength : 0;
      if (max && value.length > max) {
        return label + " is " + formatNumber(value.length - max) + " characters too long.";
      }
      return "";
    }

    function Enhancer(form) {
      this.form = form;
      this.fields = $$("input[name], textarea[name]", form).filter(function (f) {
        return f.type !== "hidden" && f.type !== "submit";
      });
      this.body = form.elements.namedItem ? form.elements.namedItem("body") : null;
      this.author = form.elements.namedItem ? form.elements.namedItem("author") : null;
      this.errors = Object.create(null);
      this.touched = Object.create(null);
      this.counter = null;
      this.saveDraft = debounce(this.persist.bind(this), 400);
    }

    Enhancer.prototype.label = function () {
      if (this.author && !this.author.getAttribute("data-label")) {
        this.author.setAttribute("data-label", "Your name");
      }
      if (this.body && !this.body.getAttribute("data-label")) {
        this.body.setAttribute("data-label", "The post");
      }
    };

    /** A hint row under the body: a shortcut tip and the characters left. */
    Enhancer.prototype.addCounter = function () {
      var body = this.body;
      if (!body || !(body.maxLength > 0)) return;
      var id = "post-body-hint";
      this.counter = h("span", { className: "field-counter", "aria-live": "polite" });
      var tip = h("span", { className: "field-tip" }, [
        h("kbd", { text: /Mac|iPhone|iPad/.test(navigator.platform || "") ? "\u2318" : "Ctrl" }),
        " + ",
        h("kbd", { text: "Enter" }),
        " to post",
      ]);
      var hint = h("p", { className: "field-hint", id: id }, [tip, this.counter]);
      body.insertAdjacentElement("afterend", hint);
      var described = (body.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean);
      if (described.indexOf(id) < 0) described.push(id);
      body.setAttribute("aria-describedby", described.join(" "));
      this.updateCounter();
    };

    Enhancer.prototype.updateCounter = function () {
      if (!this.counter || !this.body) return;
      var max = this.body.maxLength;
      var used = (this.body.value || "").length;
      var left = max - used;
      this.counter.textContent = left >= 0
        ? formatNumber(left) + (left === 1 ? " character left" : " characters left")
        : formatNumber(-left) + " over the limit";
      this.counter.classList.toggle("is-near-limit", used >= max * NEAR_LIMIT && left >= 0);
      this.counter.classList.toggle("is-over-limit", left < 0);
    };

    /** The message element for a field, made on first use. */
    Enhancer.prototype.messageFor = function (field) {
      var key = field.name;
      if (this.errors[key]) return this.errors[key];
      var id = "error-" + key;
      var el = h("p", { className: "field-error", id: id, hidden: true });
      var anchor = field === this.body && field.nextElementSibling &&
        field.nextElementSibling.classList.contains("field-hint")
        ? field.nextElementSibling
        : field;
      anchor.insertAdjacentElement("afterend", el);
      var described = (field.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean);
      if (described.indexOf(id) < 0) described.push(id);
      field.setAttribute("aria-describedby", described.join(" "));
      this.errors[key] = el;
      return el;
    };

    /**
     * Checks one field: sets the browser's custom validity (so an invalid form is not
     * submitted) and, once the person has touched it, shows the message.
     */
    Enhancer.prototype.check = function (field, reveal) {
      var message = problem(field);
      try {
        field.setCustomValidity(message);
      } catch (err) {
        /* old browsers: the server still checks */
      }
      if (reveal) this.touched[field.name] = true;
      if (!this.touched[field.name]) return message === "";
      if (message) {
        var el = this.messageFor(field);
        el.textContent = message;
        el.hidden = false;
        field.setAttribute("aria-invalid", "true");
      } else {
        if (this.errors[field.name]) this.errors[field.name].hidden = true;
        field.removeAttribute("aria-invalid");
      }
      return message === "";
    };

    Enhancer.prototype.checkAll = function (reveal) {
      var self = this;
      return this.fields.reduce(function (ok, field) {
        return self.check(field, reveal) && ok;
      }, true);
    };

    Enhancer.prototype.clearMessages = function () {
      var self = this;
      this.fields.forEach(function (field) {
        self.touched[field.name] = false;
        try {
          field.setCustomValidity("");
        } catch (err) {
          /* ignore */
        }
        field.removeAttribute("aria-invalid");
        if (self.errors[field.name]) self.errors[field.name].hidden = true;
      });
    };

    Enhancer.prototype.persist = function () {
      if (!store.available) return;
      var author = this.author ? this.author.value.trim() : "";
      if (author) store.set(AUTHOR_KEY, author.slice(0, 64));
      var body = this.body ? this.body.value : "";
      if (body.trim()) store.set(DRAFT_KEY, { body: body.slice(0, 4000), saved: Date.now() });
      else store.remove(DRAFT_KEY);
    };

    /** Puts back a remembered name and an unsent draft, into empty fields only. */
    Enhancer.prototype.restore = function () {
      if (!store.available) return;
      var author = store.get(AUTHOR_KEY, "");
      if (this.author && !this.author.value && typeof author === "string") {
        this.author.value = author;
      }
      var draft = store.get(DRAFT_KEY, null);
      var week = 7 * 24 * 60 * 60 * 1000;
      if (draft && typeof draft.body === "string" && Date.now() - (draft.saved || 0) < week) {
        if (this.body && !this.body.value) {
          this.body.value = draft.body;
          toast.show("Your unsent draft is back.", "", 3000);
        }
      } else if (draft) {
        store.remove(DRAFT_KEY);
      }
    };

    Enhancer.prototype.bind = function () {
      var self = this;
      var form = this.form;

      on(form, "input", function (event) {
        var field = event.target;
        if (self.fields.indexOf(field) < 0) return;
        self.check(field, false);
        if (field === self.body) self.updateCounter();
        self.saveDraft();
      });

      on(form, "focusout", function (event) {
        var field = event.target;
        if (self.fields.indexOf(field) < 0) return;
        // Only complain about a field once it has something in it or was left empty
        // after typing: an untouched empty form stays quiet.
        if (field.value) self.check(field, true);
      });

      // Before the browser validates (the submit button's click comes first, and an
      // Enter in a field clicks the button too), recheck with the values as they are
      // now: scripts and autofill change fields without input events.
      on(form, "click", function (event) {
        var button = event.target && event.target.closest ? event.target.closest("button, input[type=submit]") : null;
        if (!button || button.form !== form) return;
        if (button.type && button.type !== "submit") return;
        self.checkAll(false);
      }, true);

      on(form, "invalid", function (event) {
        var field = event.target;
        if (self.fields.indexOf(field) < 0) return;
        self.check(field, true);
      }, true);

      on(form, "submit", function () {
        // The page's own script posts it; the draft is sent, so forget it (the text is
        // still in the field if posting fails).
        self.saveDraft.cancel();
        store.remove(DRAFT_KEY);
        if (self.author && self.author.value.trim()) {
          store.set(AUTHOR_KEY, self.author.value.trim().slice(0, 64));
        }
        self.clearMessages();
        // app.js clears the body after a successful post without an input event.
        setTimeout(function () { self.updateCounter(); }, 0);
      });

      if (this.body) {
        on(this.body, "keydown", function (event) {
          if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
          event.preventDefault();
          self.submit();
        });
        on(this.body, "focus", function () { self.updateCounter(); });
      }
    };

    /** Submits the way the button would: validation, then the submit event. */
    Enhancer.prototype.submit = function () {
      var form = this.form;
      this.checkAll(true);
      if (typeof form.requestSubmit === "function") {
        form.requestSubmit();
        return;
      }
      var button = $("button[type=submit], button:not([type]), input[type=submit]", form);
      if (button) button.click();
    };

    function init() {
      var form = document.getElementById("new-post");
      if (!form || form.tagName.toLowerCase() !== "form") return null;
      var enhancer = new Enhancer(form);
      enhancer.label();
      enhancer.restore();
      enhancer.addCounter();
      enhancer.bind();
      // Counter stays right when the list changes (a post was added and the body
      // cleared by the page's script).
      var list = document.getElementById("posts");
      if (list && window.MutationObserver) {
        new MutationObserver(function () { enhancer.updateCounter(); })
          .observe(list, { childList: true });
      }
      return enhancer;
    }

    return { init: init, problem: problem };
  })();

  // ---------------------------------------------------------------------------------
  // Images: fade in lazy ones as they arrive, mark broken ones
  // ---------------------------------------------------------------------------------

  var images = (function () {
    function settle(img) {
      img.classList.remove("is-loading");
      if (img.naturalWidth === 0) {
        img.classList.add("is-broken");
      } else {
        img.classList.add("is-loaded");
      }
    }

    function watch(img) {
      if (img.getAttribute("data-watched")) return;
      img.setAttribute("data-watched", "1");
      if (img.complete) {
        // Already here (or already failed): no fade, just the state.
        if (img.naturalWidth === 0 && img.getAttribute("src")) img.classList.add("is-broken");
        return;
      }
      if (!prefersReducedMotion()) img.classList.add("is-loading");
      on(img, "load", function () { settle(img); }, { once: true });
      on(img, "error", function () { settle(img); }, { once: true });
    }

    function init() {
      $$("img[loading=lazy]").forEach(watch);
    }

    return { init: init, watch: watch };
  })();

  // ---------------------------------------------------------------------------------
  // New posts: highlight what the page's script adds
  // ---------------------------------------------------------------------------------

  var newPosts = (function () {
    function init() {
      var list = document.getElementById("posts");
      if (!list || !window.MutationObserver) return;
      new MutationObserver(function (mutations) {
        mutations.forEach(function (m) {
          Array.prototype.forEach.call(m.addedNodes, function (node) {
            if (node.nodeType !== 1 || node.tagName.toLowerCase() !== "li") return;
            node.classList.add("is-new");
            setTimeout(function () { node.classList.remove("is-new"); }, 2600);
            relativeTimes.refresh(node);
          });
        });
      }).observe(list, { childList: true });
    }
    return { init: init };
  })();

  // ---------------------------------------------------------------------------------
  // Keyboard shortcuts
  // ---------------------------------------------------------------------------------

  var shortcuts = (function () {
    var pendingG = 0;

    var table = [
      { keys: "/", what: "Write a post" },
      { keys: "g h", what: "Go to the top" },
      { keys: "g a", what: "Go to the about page" },
      { keys: "?", what: "Show these shortcuts" },
    ];

    function focusForm() {
      var body = $("#new-post textarea");
      if (!body) return false;
      body.focus();
      if (body.scrollIntoView) body.scrollIntoView({ block: "center", behavior: prefersReducedMotion() ? "auto" : "smooth" });
      return true;
    }

    function help() {
      var text = table.map(function (row) { return row.keys + ": " + row.what; }).join(" \u00b7 ");
      toast.show(text, "", 6000);
    }

    function onKey(event) {
      if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
      if (isTyping(event.target)) return;
      if (document.documentElement.classList.contains("has-lightbox")) return;
      var key = event.key;
      if (pendingG) {
        clearTimeout(pendingG);
        pendingG = 0;
        if (key === "h") {
          event.preventDefault();
          window.scrollTo({ top: 0, behavior: prefersReducedMotion() ? "auto" : "smooth" });
        } else if (key === "a") {
          var about = $("a[href$='about.html']");
          if (about && sameOrigin(about.href)) {
            event.preventDefault();
            window.location.assign(about.href);
          }
        }
        return;
      }
      if (key === "/") {
        if (focusForm()) event.preventDefault();
      } else if (key === "?") {
        event.preventDefault();
        help();
      } else if (key === "g") {
        pendingG = setTimeout(function () { pendingG = 0; }, 1200);
      }
    }

    function init() {
      on(document, "keydown", onKey);
    }

    return { init: init, table: table };
  })();

  // ---------------------------------------------------------------------------------
  // Connectivity notices
  // ---------------------------------------------------------------------------------

  var connectivity = (function () {
    var dismissOffline = null;

    function init() {
      on(window, "offline", function () {
        if (dismissOffline) return;
        dismissOffline = toast.show("You are offline: new posts will wait until you are back.", "warning", 0);
      });
      on(window, "online", function () {
        if (dismissOffline) {
          dismissOffline();
          dismissOffline = null;
        }
        toast.show("Back online.", "", 2500);
      });
    }

    return { init: init };
  })();

  // ---------------------------------------------------------------------------------
  // Back to top
  // ---------------------------------------------------------------------------------

  var backToTop = (function () {
    function init() {
      var button = h("button", {
        type: "button",
        className: "to-top",
        "aria-label": "Back to top",
        title: "Back to top",
        text: "\u2191",
      });
      document.body.appendChild(button);
      var update = rafThrottle(function () {
        var far = window.scrollY > Math.max(600, window.innerHeight * 1.5);
        button.classList.toggle("is-visible", far);
        button.tabIndex = far ? 0 : -1;
      });
      on(window, "scroll", update, { passive: true });
      on(window, "resize", update, { passive: true });
      on(button, "click", function () {
        window.scrollTo({ top: 0, behavior: prefersReducedMotion() ? "auto" : "smooth" });
        var heading = $("h1");
        if (heading) {
          heading.setAttribute("tabindex", "-1");
          heading.focus({ preventScroll: true });
        }
      });
      update();
    }

    return { init: init };
  })();

  // ---------------------------------------------------------------------------------
  // Navigation: mark the current page
  // ---------------------------------------------------------------------------------

  var navigation = (function () {
    function normalise(path) {
      if (!path) return "/";
      var p = path.replace(/\/index\.html$/, "/");
      return p.length > 1 ? p.replace(/\/$/, "") : p;
    }

    function init() {
      var here = normalise(window.location.pathname);
      $$("header nav a[href]").forEach(function (a) {
        if (!sameOrigin(a.href)) return;
        var there = normalise(new URL(a.href, window.location.href).pathname);
        if (there === here) a.setAttribute("aria-current", "page");
        else a.removeAttribute("aria-current");
      });
    }

    return { init: init };
  })();

  // ---------------------------------------------------------------------------------
  // Start
  // ---------------------------------------------------------------------------------

  var features = [
    ["relativeTimes", relativeTimes.init],
    ["lightbox", lightbox.init],
    ["postForm", postForm.init],
    ["images", images.init],
    ["newPosts", newPosts.init],
    ["shortcuts", shortcuts.init],
    ["connectivity", connectivity.init],
    ["backToTop", backToTop.init],
    ["navigation", navigation.init],
  ];

  function start() {
    document.documentElement.classList.add("js");
    features.forEach(function (feature) {
      try {
        feature[1]();
      } catch (err) {
        if (window.console && console.warn) console.warn("site.js: " + feature[0] + " failed:", err);
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start, { once: true });
  } else {
    start();
  }

  // A small, deliberate surface for debugging from the console.
  window.foobarSite = {
    version: 1,
    relativeTime: relativeTimes.describe,
    openLightbox: lightbox.open,
    closeLightbox: lightbox.close,
    toast: toast.show,
    shortcuts: shortcuts.table,
  };
})();
