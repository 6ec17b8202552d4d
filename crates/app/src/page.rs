//! The front page's HTML. Every value from users is escaped here, in one place.

use crate::store::Post;

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
            "<li><div class=\"meta\">{} · <time>{}</time> · #{}</div><div>{}</div></li>\n",
            escape(&p.author),
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
<link rel="stylesheet" href="/static/style.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<header><img src="/static/logo.png" alt=""><h1>www.foobar.com</h1><nav><a href="/">Posts</a><a href="/about.html">About</a></nav></header>
<main>
<form id="new-post" method="post" action="/posts">
<input name="author" placeholder="Your name" maxlength="64" required>
<textarea name="body" placeholder="What's new?" maxlength="2000" rows="3" required></textarea>
<button type="submit">Post</button>
<span id="status" class="meta"></span>
</form>
{error}
<ul id="posts" class="posts">
{items}</ul>
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
}
