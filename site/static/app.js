// www.foobar.com: posts a new entry through the JSON API without reloading the page.
// Without JavaScript the form still works: it posts to /posts and the page reloads.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("new-post");
  const list = document.getElementById("posts");
  const status = document.getElementById("status");
  if (!form || !list) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = { author: form.author.value, body: form.body.value };
    status.textContent = "";
    try {
      const resp = await fetch("/api/posts", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(data),
      });
      const json = await resp.json();
      if (!resp.ok) { status.textContent = json.error || "could not post"; return; }
      const li = document.createElement("li");
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = `${json.author} · ${json.created_at}`;
      const body = document.createElement("div");
      body.textContent = json.body;
      li.append(meta, body);
      list.prepend(li);
      const empty = document.getElementById("empty");
      if (empty) empty.remove();
      form.body.value = "";
      status.textContent = `posted, served by ${resp.headers.get("x-served-by") || "?"}`;
    } catch (err) {
      status.textContent = `could not post: ${err}`;
    }
  });
});
