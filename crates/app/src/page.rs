//! The front page's HTML. Every value from users is escaped here, in one place.

use crate::store::Post;

/// The site's fingerprinted stylesheet and script: `site.` + the first 8 hex digits of
/// the SHA-256 of the file's bytes, so browsers and caches may keep them for ever.
/// The one place the Rust code names them: `tools/site/fingerprint.py` renames the
/// files after an edit and rewrites these lines (and site/*.html); the tests below fail
/// when a name and its file disagree.
pub const SITE_CSS: &str = "/static/site.d14a4355.css";
/// See [`SITE_CSS`].
pub const SITE_JS: &str = "/static/site.6f2bffd9.js";

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page listing `posts`, with the form to add one and an optional error line.
pub fn render(posts: &[Post], error: Option<&str>) -> String {
    let mut items = String::new();
    for p in posts {
        items.push_str(&format!(
            "<li><div class=\"meta\">{} · <time datetime=\"{}\">{}</time> · #{}</div><div>{}</div></li>\n",
            escape(&p.author),
            escape(&p.created_at),
            escape(&p.created_at),
            p.id,
            escape(&p.body)
        ));
    }
    if posts.is_empty() {
        items.push_str("<li id=\"empty\">No posts yet. Be the first.</li>\n");
    }
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>www.foobar.com</title>
<link rel="stylesheet" href="{SITE_CSS}">
<link rel="stylesheet" href="/static/style.css">
<script src="/static/app.js" defer></script>
<script src="{SITE_JS}" defer></script>
</head>
<body>
<header><img src="/static/logo.png" alt=""><h1>www.foobar.com</h1><nav><a href="/">Posts</a><a href="/about.html">About</a></nav></header>
<main>
<figure class="hero">
<a href="/static/img/lake-at-dusk.jpg" data-lightbox="photos"><img src="/static/img/lake-at-dusk.jpg" width="1600" height="900" alt="Pine trees on the shore of a mountain lake at dusk" fetchpriority="high"></a>
<figcaption><strong>What's new around the lake?</strong>Tell everyone: posts show up at once on every server.</figcaption>
</figure>
<form id="new-post" method="post" action="/posts">
<input name="author" placeholder="Your name" maxlength="64" required>
<textarea name="body" placeholder="What's new?" maxlength="2000" rows="3" required></textarea>
<button type="submit">Post</button>
<span id="status" class="meta"></span>
</form>
{error}
<ul id="posts" class="posts">
{items}</ul>
<section class="gallery" aria-labelledby="photos">
<h2 id="photos">Photos</h2>
<ul class="gallery-grid">
<li><figure><a href="/static/img/green-valley.jpg" data-lightbox="photos"><img src="/static/img/green-valley.jpg" width="800" height="500" alt="Green hills with fir trees under a summer sky" loading="lazy" decoding="async"></a><figcaption>The valley in summer</figcaption></figure></li>
<li><figure><a href="/static/img/dunes.webp" data-lightbox="photos"><img src="/static/img/dunes.webp" width="800" height="500" alt="Sand dunes under a hazy sky" loading="lazy" decoding="async"></a><figcaption>Dunes at noon</figcaption></figure></li>
<li><figure><a href="/static/img/city-at-night.png" data-lightbox="photos"><img src="/static/img/city-at-night.png" width="400" height="250" alt="A city skyline at night with lit windows" loading="lazy" decoding="async"></a><figcaption>The city at night</figcaption></figure></li>
</ul>
</section>
</main>
<footer>served by hastack</footer>
</body>
</html>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_escaped() {
        let p = Post {
            id: 1,
            author: "<script>".into(),
            body: "a & \"b\"".into(),
            created_at: "t".into(),
        };
        let html = render(&[p], Some("<bad>"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("a &amp; &quot;b&quot;"));
        assert!(html.contains("&lt;bad&gt;"));
    }

    #[test]
    fn empty_list_says_so() {
        assert!(render(&[], None).contains("No posts yet"));
    }

    /// The built-in site (`site/` at the repository root), read at test time.
    fn site_dir() -> std::path::PathBuf {
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../site"))
    }

    /// Every `/static/...` path in `html`, up to the quote or bracket that ends it.
    fn static_paths(html: &str) -> Vec<&str> {
        let ends = |c: char| c == '"' || c == '\'' || c == '(' || c == ')' || c == '>';
        html.match_indices("/static/")
            .map(|(at, _)| {
                let rest = &html[at..];
                let len = rest
                    .find(|c: char| ends(c) || c.is_whitespace())
                    .unwrap_or(rest.len());
                &rest[..len]
            })
            .collect()
    }

    #[test]
    fn every_static_path_the_pages_name_is_a_file_of_the_site() {
        let site = site_dir();
        let about = std::fs::read_to_string(site.join("about.html")).expect("site/about.html");
        let front = render(&[], None);
        for (page, html) in [
            ("the front page", front.as_str()),
            ("about.html", about.as_str()),
        ] {
            let paths = static_paths(html);
            for asset in [SITE_CSS, SITE_JS, "/static/style.css", "/static/logo.png"] {
                assert!(paths.contains(&asset), "{page} does not name {asset}");
            }
            assert!(
                paths.iter().any(|p| p.starts_with("/static/img/")),
                "{page} shows no image"
            );
            for path in paths {
                let file = site.join(path.trim_start_matches('/'));
                assert!(
                    file.is_file(),
                    "{page} names {path}, but {} is not a file: rename it back, or rerun tools/site/fingerprint.py",
                    file.display()
                );
            }
        }
    }

    #[test]
    fn the_fingerprinted_names_are_their_files_sha256() {
        use sha2::{Digest, Sha256};
        for (asset, ext) in [(SITE_CSS, ".css"), (SITE_JS, ".js")] {
            let bytes = std::fs::read(site_dir().join(asset.trim_start_matches('/')))
                .unwrap_or_else(|e| panic!("{asset}: {e}"));
            let hex = format!("{:x}", Sha256::digest(&bytes));
            let name = asset.strip_prefix("/static/site.").expect("site.<hex>");
            assert_eq!(
                name,
                format!("{}{ext}", &hex[..8]),
                "{asset} holds other bytes now: rerun tools/site/fingerprint.py"
            );
        }
    }

    #[test]
    fn times_carry_their_instant_for_the_script() {
        let p = Post {
            id: 7,
            author: "a".into(),
            body: "b".into(),
            created_at: "2025-01-02T03:04:05.678Z".into(),
        };
        let html = render(&[p], None);
        assert!(
            html.contains(
                r#"<time datetime="2025-01-02T03:04:05.678Z">2025-01-02T03:04:05.678Z</time>"#
            ),
            "{html}"
        );
    }
}
