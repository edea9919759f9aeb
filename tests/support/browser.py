"""Playwright helpers for the UI tests: Debian's Chromium, artifacts, files, accessibility checks."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

from services.api.routes.ui import CONTENT_TYPES, STATIC_DIR
from tests.support import servers

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every wait of a page (actions and expect) has this much time: a 2-core machine running other test workers
# can take far longer than a person would wait, and a wait on a condition costs nothing when it holds.
WAIT_MS = 60_000
LAPTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = servers.ROOT / "docs" / "screenshots"
ARTIFACTS = servers.ROOT / "test-artifacts" / "ui"

NO_BROWSER = (
    f"Debian's Chromium is not installed at {CHROMIUM} and could not be installed: `make install` installs it "
    "as root (apt-get install chromium); browser tests need it"
)


def browser_missing_reason() -> str | None:
    if shutil.which(str(CHROMIUM)) is None:
        return NO_BROWSER
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


def artifact_dir(test_name: str) -> Path:
    path = ARTIFACTS / test_name.replace("/", "_").replace("[", "_").replace("]", "")
    path.mkdir(parents=True, exist_ok=True)
    return path


def drop_files(page: Any, selector: str, paths: list[Path]) -> None:
    """Drop real files on an element, as a drag from the desktop would (a DataTransfer with File objects)."""
    files = [{"name": p.name, "b64": base64.b64encode(p.read_bytes()).decode(), "type": _mime(p.name)} for p in paths]
    transfer = page.evaluate_handle(
        """(files) => {
            const dt = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
                dt.items.add(new File([bytes], f.name, { type: f.type }));
            }
            return dt;
        }""",
        files,
    )
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def _mime(name: str) -> str:
    return {"pdf": "application/pdf", "txt": "text/plain", "wav": "audio/wav"}.get(name.rsplit(".", 1)[-1], "")


# Every form control has a label and every button/link a name: what a screen reader would announce.
A11Y_PROBLEMS_JS = """() => {
    const problems = [];
    const visible = (el) => !(el.closest('[hidden]') || el.closest('dialog:not([open])'));
    const text = (el) => (el.getAttribute('aria-label') || el.innerText || el.textContent || el.title || '').trim();
    const labelled = (el) => (el.labels && el.labels.length > 0 && [...el.labels].some((l) => l.textContent.trim()))
        || (el.getAttribute('aria-label') || '').trim()
        || (el.getAttribute('aria-labelledby') || '').split(' ')
            .some((id) => document.getElementById(id)?.textContent.trim());
    for (const el of document.querySelectorAll('input, select, textarea, progress')) {
        if (el.type === 'hidden' || !visible(el)) continue;
        if (!labelled(el)) problems.push(`unlabelled ${el.tagName.toLowerCase()}#${el.id || '?'}`);
    }
    for (const el of document.querySelectorAll('button, a[href], [role=button]')) {
        if (!visible(el)) continue;
        if (!text(el)) problems.push(`nameless ${el.tagName.toLowerCase()} ${el.outerHTML.slice(0, 80)}`);
    }
    for (const el of document.querySelectorAll('img')) {
        if (!el.hasAttribute('alt')) problems.push(`img without alt ${el.src}`);
    }
    if (!document.documentElement.lang) problems.push('no lang on <html>');
    const h1s = document.querySelectorAll('h1').length;
    if (h1s !== 1) problems.push(`${h1s} h1 elements`);
    if (!document.querySelector('[aria-live]')) problems.push('no aria-live region');
    return problems;
}"""


def accessibility_problems(page: Any) -> list[str]:
    return list(page.evaluate(A11Y_PROBLEMS_JS))


def horizontal_overflow(page: Any) -> int:
    """How many CSS pixels the page is wider than the viewport (0 = no horizontal scrolling)."""
    return int(page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth"))


# Records every documents-table row as it is (re-)rendered: the statuses and stages a person saw.
RECORD_ROWS_JS = """() => {
    window.__kbRows = [];
    window.__notReloaded = true;
    const record = (tr) => window.__kbRows.push(
        { id: tr.dataset.documentId, status: tr.dataset.status, stage: tr.dataset.stage, t: Date.now() });
    new MutationObserver((mutations) => {
        for (const m of mutations) for (const node of m.addedNodes) {
            if (node.nodeType !== 1) continue;
            if (node.matches('tr[data-document-id]')) record(node);
            node.querySelectorAll?.('tr[data-document-id]').forEach(record);
        }
    }).observe(document.body, { childList: true, subtree: true });
    document.querySelectorAll('tr[data-document-id]').forEach(record);
}"""


def recorded_rows(page: Any) -> list[dict[str, Any]]:
    return list(page.evaluate("() => window.__kbRows || []"))


def save_failure_artifacts(page: Any, directory: Path, console: list[str]) -> None:
    try:
        page.screenshot(path=str(directory / "failure.png"), full_page=True)
        (directory / "page.html").write_text(page.content())
    except Exception as exc:  # the page may be gone; the console log still helps
        console.append(f"(could not capture the page: {exc})")
    (directory / "console.log").write_text("\n".join(console))
    (directory / "rows.json").write_text(json.dumps(_safe_rows(page), indent=1))


def _safe_rows(page: Any) -> list[dict[str, Any]]:
    try:
        return recorded_rows(page)
    except Exception:
        return []


def sign_in(page: Any, base_url: str, api_key: str) -> None:
    page.goto(base_url + "/")
    page.get_by_label("API key").fill(api_key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", level=1, name="Knowledge bases").wait_for()


def create_kb(page: Any, name: str) -> None:
    """Create a knowledge base from the list page; the UI then opens it."""
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_role("button", name="Create", exact=True).click()
    page.get_by_role("heading", level=1, name=name).wait_for()
    page.locator("#dropzone").wait_for()


def file_chooser_by_keyboard(page: Any, target: Any, *, key: str = "Space", deadline_s: float = 120.0) -> Any:
    """The file chooser that ``key`` on the focused ``target`` opens, asking again until one appears.

    A loaded headless Chromium sometimes drops the activation (or opens the chooser long after it): one
    listener stays on for the whole wait, so a late chooser still counts, and the key is pressed again
    whenever ``REPRESS_S`` pass without one, until the overall deadline.
    """
    from playwright.sync_api import expect

    choosers: list[Any] = []

    def on_chooser(chooser: Any) -> None:
        choosers.append(chooser)

    page.on("filechooser", on_chooser)
    try:
        deadline = time.monotonic() + deadline_s
        pressed_at: float | None = None
        presses = 0
        while not choosers:
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"no file chooser within {deadline_s:g} s of {presses} {key} presses")
            if pressed_at is None or now - pressed_at >= REPRESS_S:
                expect(target).to_be_focused()
                page.keyboard.press(key)
                pressed_at, presses = time.monotonic(), presses + 1
            page.wait_for_timeout(POLL_MS)  # lets Playwright deliver the event; the loop waits on the condition
        return choosers[0]
    finally:
        page.remove_listener("filechooser", on_chooser)


REPRESS_S = 15.0
POLL_MS = 200


def row(page: Any, filename: str) -> Any:
    return page.locator("tr[data-document-id]", has=page.locator("a.filename", has_text=filename))


def upload_item(page: Any, filename: str) -> Any:
    """The newest entry of the upload list for ``filename``."""
    return page.locator(f'li.upload[data-filename="{filename}"]').first


def screenshot(page: Any, name: str, *, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=full_page, animations="disabled", caret="hide")
    return path


# The UI's modules served to a page from the source folder, with no server: for tests of one module.
STATIC_ORIGIN = "http://kbingest.test"


def serve_ui_files(page: Any) -> Any:
    """Point ``page`` at an empty document whose ``/ui/…`` imports are the UI's static files."""

    def fulfil(route: Any) -> None:
        path = route.request.url.removeprefix(STATIC_ORIGIN)
        if path.startswith("/ui/"):
            file = STATIC_DIR / path.removeprefix("/ui/")
            route.fulfill(status=200, body=file.read_bytes(), content_type=CONTENT_TYPES[file.suffix])
        else:
            route.fulfill(status=200, body="<!doctype html><title>t</title>", content_type="text/html")

    page.route(f"{STATIC_ORIGIN}/**", fulfil)
    page.goto(f"{STATIC_ORIGIN}/")
    return page
