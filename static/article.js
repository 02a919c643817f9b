// The article: Markdown rendered with the vendored markdown-it, and ways to take it away.
//
// The Markdown comes from an LLM and carries the user's topic, so it is untrusted: raw HTML
// is shown as text, only http(s) and mailto links become links, and images are not made
// (they would load from anywhere). What markdown-it returns is then safe to insert.

const SAFE_LINK = /^(https?:|mailto:)/i;

function renderer() {
  const md = window.markdownit({ html: false, linkify: false, typographer: false });
  md.disable("image");
  md.validateLink = (url) => SAFE_LINK.test(url.trim());
  md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
    tokens[idx].attrSet("rel", "noopener noreferrer");
    tokens[idx].attrSet("target", "_blank");
    return self.renderToken(tokens, idx, options);
  };
  // The article sits under the page's h1 and the panel's h2, so its own levels start at h3.
  md.renderer.rules.heading_open = md.renderer.rules.heading_close = (
    tokens, idx, options, env, self
  ) => {
    const level = Math.min(6, Number(tokens[idx].tag.slice(1)) + 2);
    tokens[idx].tag = `h${level}`; // each render parses afresh, so this shifts once
    return self.renderToken(tokens, idx, options);
  };
  return md;
}

// A file name from the topic: ASCII letters and digits joined by dashes, never empty.
export function fileName(topic) {
  const stem = topic
    .normalize("NFKD")
    .replace(/[\u0300-\u036f]/g, "")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 60)
    .replace(/-+$/, "");
  return `${stem || "article"}.md`;
}

export class ArticleView {
  constructor({ body, copy, download, copyStatus }) {
    this.md = renderer();
    this.body = body;
    this.copy = copy;
    this.download = download;
    this.copyStatus = copyStatus;
    this.shown = null; // the Markdown now on screen
    this.pending = null;
    this.frame = 0;
    this.source = "";
    this.blobUrl = "";
    copy.addEventListener("click", () => this.copySource());
  }

  // Show `text`; while it streams, redraw at most once a frame, and at once when it is final.
  show(text, final, topic) {
    this.pending = text;
    if (final) {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
      this.draw();
    } else if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.draw();
      });
    }
    this.offer(final ? text : "", topic);
  }

  draw() {
    if (this.pending === this.shown) return;
    this.shown = this.pending;
    this.body.innerHTML = this.md.render(this.shown);
  }

  clear() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.pending = null;
    this.shown = null;
    this.body.replaceChildren();
    this.offer("");
  }

  // Copy and Download appear once the article is final, for exactly its Markdown.
  offer(source, topic = "") {
    if (source === this.source) return;
    this.source = source;
    if (this.blobUrl) URL.revokeObjectURL(this.blobUrl);
    this.blobUrl = "";
    this.copy.hidden = !source;
    this.download.hidden = !source;
    this.copyStatus.textContent = "";
    if (!source) {
      this.download.removeAttribute("href");
      return;
    }
    const blob = new Blob([source], { type: "text/markdown;charset=utf-8" });
    this.blobUrl = URL.createObjectURL(blob);
    this.download.href = this.blobUrl;
    this.download.download = fileName(topic || "");
  }

  async copySource() {
    try {
      await navigator.clipboard.writeText(this.source);
      this.copyStatus.textContent = "Copied the article's Markdown.";
    } catch {
      this.copyStatus.textContent = "Could not copy: the browser refused. Use Download instead.";
    }
  }
}
