"""The web UI in-process: sign-in, the upload form, every page rendered after the demo job,
and accessibility basics checked by parsing the HTML (one h1 and no skipped heading levels,
landmarks, a label for every control, a caption for every table, a title for every chart)."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.service.api_client import ApiClient, serve_in_process
from tests.service.jobs_support import DEMO, DEMO_CALLS, JOB_KEYS, auth, jobs_config, wait_job

LANDMARKS = ("header", "nav", "main", "footer")
CONTROLS = ("input", "select", "textarea")


class Page(HTMLParser):
    """What the accessibility checks need of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.headings: list[int] = []
        self.labels: set[str] = set()
        self.tables = 0
        self.captions = 0
        self.svgs = 0
        self.svg_titles = 0
        self.lang: str | None = None
        self._stack: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if tag == "html":
            self.lang = values.get("lang")
        if len(tag) == 2 and tag[0] == "h" and tag[1].isdigit():
            self.headings.append(int(tag[1]))
        if tag == "label" and "for" in values:
            self.labels.add(values["for"])
        if tag == "table":
            self.tables += 1
        if tag == "caption":
            self.captions += 1
        if tag == "svg":
            self.svgs += 1
        if tag == "title" and self._stack and self._stack[-1] == "svg":
            self.svg_titles += 1
        if tag not in ("input", "br", "meta", "link"):
            self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._stack:
            while self._stack and self._stack.pop() != tag:
                pass

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.tags if t == tag)

    def unlabelled_controls(self) -> list[dict[str, str]]:
        out = []
        for tag, attrs in self.tags:
            if tag not in CONTROLS or attrs.get("type") in ("hidden", "submit"):
                continue
            if attrs.get("id") not in self.labels and not attrs.get("aria-label"):
                out.append(attrs)
        return out


def check_accessible(text: str) -> Page:
    page = Page(text)
    assert page.lang == "en"
    assert page.headings.count(1) == 1, page.headings
    for before, after in zip(page.headings, page.headings[1:], strict=False):
        assert after <= before + 1, f"heading level skipped: {page.headings}"
    for landmark in LANDMARKS:
        assert page.count(landmark) >= 1 or landmark == "nav", landmark
    assert page.count("main") == 1
    assert page.unlabelled_controls() == []
    assert page.captions == page.tables
    assert page.svg_titles == page.svgs
    return page


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiClient, str]]:
    """A service with the demo job done and a browser-like client signed in."""
    directory = tmp_path_factory.mktemp("web")
    with serve_in_process(jobs_config(directory)) as api:
        response = api.post("/ui/login", data={"api_key": JOB_KEYS["analyst"][0], "next": "/ui/"})
        assert response.status_code == 303
        cookie = response.cookies["stirscope_key"]
        assert "httponly" in response.headers["set-cookie"].lower()
        assert "samesite=strict" in response.headers["set-cookie"].lower()
        api._client.cookies.set("stirscope_key", cookie)  # the browser keeps it
        files = {"capture": ("demo.pcap", DEMO.read_bytes(), "application/vnd.tcpdump.pcap")}
        uploaded = api.post("/ui/jobs", files=files)
        assert uploaded.status_code == 303
        job_id = uploaded.headers["location"].rsplit("/", 1)[-1]
        assert wait_job(api, job_id)["state"] == "done"
        yield api, job_id


def _get(api: ApiClient, url: str, status: int = 200) -> str:
    response = api.get(url)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def _first_call(api: ApiClient, job_id: str) -> int:
    calls = api.get("/v1/calls", headers=auth(), params={"job": job_id, "limit": 1}).json()
    return int(calls["calls"][0]["id"])


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("/ui/", ["Analysis jobs", "Upload captures", "demo.pcap"]),
        ("/ui/jobs/{job}", ["done", "Browse its 13 calls", "Calls by verdict"]),
        ("/ui/calls?job={job}", ["TN-Validation-Passed", "Alpha Telecom"]),
        ("/ui/calls?job={job}&attest=C", ["Charlie Gateway"]),
        ("/ui/calls/{call}", ["Ladder", "PASSporT 1", "Signer certificate", "Chain trusted"]),
        ("/ui/signers", ["Calls per signer", "1234A"]),
        ("/ui/signers?job={job}", ["Campaigns", "Calls by signer"]),
        ("/ui/jobs/{job}/traceback", ["Traceback candidates", "Download candidates as CSV"]),
    ],
    ids=[
        "jobs",
        "job",
        "calls",
        "calls-filtered",
        "call",
        "signers",
        "signers-job",
        "traceback",
    ],
)
def test_pages_render_accessibly(web: tuple[ApiClient, str], url: str, expect: list[str]) -> None:
    api, job_id = web
    text = _get(api, url.format(job=job_id, call=_first_call(api, job_id)))
    for needle in expect:
        assert needle in text
    check_accessible(text)


def test_calls_page_paginates_with_links(web: tuple[ApiClient, str]) -> None:
    api, job_id = web
    text = _get(api, f"/ui/calls?job={job_id}")
    rows = Page(text).count("tr") - 1
    assert rows == DEMO_CALLS  # one page of 50 holds the demo


def test_bad_filter_is_shown_not_crashed(web: tuple[ApiClient, str]) -> None:
    api, _ = web
    text = _get(api, "/ui/calls?calling=not-a-number", 400)
    assert "Invalid filter" in text
    check_accessible(text)


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/ui/jobs/0123456789abcdef0123456789abcdef", 404),
        ("/ui/calls/999999", 404),
        ("/ui/calls/abc", 404),
        ("/ui/jobs/{job}/export.pdf", 404),
    ],
    ids=["unknown-job", "unknown-call", "bad-call-id", "unknown-export"],
)
def test_unknown_things_are_html_error_pages(
    web: tuple[ApiClient, str], url: str, status: int
) -> None:
    api, job_id = web
    text = _get(api, url.format(job=job_id), status)
    assert "Error code" in text
    check_accessible(text)


@pytest.mark.parametrize(
    ("suffix", "media"),
    [
        ("export.csv", "text/csv"),
        ("export.jsonl", "application/x-ndjson"),
        ("export.html", "text/html"),
        ("traceback.csv", "text/csv"),
        ("traceback.json", "application/json"),
    ],
)
def test_export_links(web: tuple[ApiClient, str], suffix: str, media: str) -> None:
    api, job_id = web
    response = api.get(f"/ui/jobs/{job_id}/{suffix}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media)
    assert response.content


def test_non_capture_upload_shows_the_form_again(web: tuple[ApiClient, str]) -> None:
    api, _ = web
    files = {"capture": ("notes.txt", b"just some text, not a capture", "text/plain")}
    response = api.post("/ui/jobs", files=files)
    assert response.status_code == 415
    assert "not a pcap or pcapng capture" in response.text
    check_accessible(response.text)


def test_cross_site_post_is_refused(web: tuple[ApiClient, str]) -> None:
    api, _ = web
    files = {"capture": ("demo.pcap", DEMO.read_bytes(), "application/octet-stream")}
    response = api.post("/ui/jobs", files=files, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403


@pytest.fixture
def anonymous(tmp_path: Path) -> Iterator[ApiClient]:
    with serve_in_process(jobs_config(tmp_path, job_workers=0)) as api:
        yield api


@pytest.mark.parametrize("url", ["/ui/", "/ui/calls", "/ui/signers", "/ui/calls/1"])
def test_pages_need_sign_in(anonymous: ApiClient, url: str) -> None:
    response = anonymous.get(url)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/ui/login?next=")


@pytest.mark.parametrize(
    ("key", "status"),
    [
        (JOB_KEYS["verifier"][0], 401),
        ("wrong", 401),
        ("", 401),
    ],
    ids=["key-without-jobs-scope", "unknown-key", "empty"],
)
def test_sign_in_refuses_bad_keys(anonymous: ApiClient, key: str, status: int) -> None:
    response = anonymous.post("/ui/login", data={"api_key": key})
    assert response.status_code == status
    assert "stirscope_key" not in response.cookies
    check_accessible(response.text)


@pytest.mark.parametrize(
    ("target", "landing"),
    [
        ("/ui/calls", "/ui/calls"),
        ("https://evil.example/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
    ],
    ids=["local", "absolute-elsewhere", "scheme-relative"],
)
def test_sign_in_only_redirects_within_the_ui(
    anonymous: ApiClient, target: str, landing: str
) -> None:
    response = anonymous.post("/ui/login", data={"api_key": JOB_KEYS["analyst"][0], "next": target})
    assert (response.status_code, response.headers["location"]) == (303, landing)


def test_login_page_and_stylesheet(anonymous: ApiClient) -> None:
    check_accessible(_get(anonymous, "/ui/login"))
    css = anonymous.get("/ui/static/stirscope.css")
    assert css.headers["content-type"].startswith("text/css")
