"""The listening page's builder (weaktok/experiments/page.py) on a real tiny evaluation: relative, percent-encoded
links to files that exist, escaped text, nothing fetched from elsewhere, missing files and folders named. The
page in a real browser: tests/integration/test_report_page.py."""

import json
import shutil
import subprocess
from html.parser import HTMLParser
from urllib.parse import unquote, urlparse

import pytest

from tests.helpers import REPO, cpu_env, venv_bin
from tests.unit.evaluation.test_evaluate import tiny_evaluation
from weaktok.experiments.page import write_page


class Tags(HTMLParser):
    """Every start tag with its attributes, in order."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def of(self, name: str) -> list[dict]:
        return [a for t, a in self.tags if t == name]


def parse(html: str) -> Tags:
    p = Tags()
    p.feed(html)
    return p


@pytest.fixture
def eval_copy(tmp_path_factory, tmp_path):
    """A copy of the tiny evaluation's folder (table1.json, plots, audio/) that a test may edit."""
    _, out, _, _ = tiny_evaluation(tmp_path_factory)
    return shutil.copytree(out, tmp_path / "eval")


def test_page_links_every_clip_relatively_and_escapes_text(eval_copy):
    ev = eval_copy
    t = json.loads((ev / "table1.json").read_text())
    t["split"] = "<script>alert(1)</script>"
    t["seeds"][0]["checkpoint"] = 'runs/a&b "q"/model.pt'
    (ev / "table1.json").write_text(json.dumps(t))
    idx = json.loads((ev / "audio" / "clips.json").read_text())
    first = idx["groups"][0]["clips"][0]
    first["key"] = "<b>k&</b>"
    odd = "data/a b#1.wav"  # a name that needs percent-encoding in a URL
    (ev / "audio" / first["wav"]).rename(ev / "audio" / odd)
    first["wav"] = odd
    (ev / "audio" / "clips.json").write_text(json.dumps(idx))

    page = write_page(ev)
    assert page == ev / "index.html"
    html = page.read_text()
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "runs/a&amp;b &quot;q&quot;/model.pt" in html and "&lt;b&gt;k&amp;&lt;/b&gt;" in html
    tags = parse(html)
    audios, imgs = tags.of("audio"), tags.of("img")
    assert len(audios) == sum(len(g["clips"]) for g in idx["groups"])
    assert "a%20b%231.wav" in audios[0]["src"]
    for a in audios:
        assert a["preload"] == "metadata" and "controls" in a
    for src in [a["src"] for a in audios] + [i["src"] for i in imgs]:
        url = urlparse(src)
        assert not url.scheme and not url.netloc and not src.startswith("/"), src
        assert (ev / unquote(url.path)).is_file(), src
    assert {"rel_err.png", "lscore_hist.png"} <= {i["src"].rsplit("/", 1)[-1] for i in imgs}
    # self-contained: inline CSS, no stylesheet or script from anywhere, no absolute link
    assert not tags.of("script") and all(
        link["href"].startswith("data:") for link in tags.of("link")
    )
    assert "http://" not in html and "https://" not in html
    for cell in ("0.409", "2.962", "0.739", "0.496", "0.502", "6.667", "0.067", "0.571"):
        assert cell in html, cell  # the paper's eight cells, quoted


def test_missing_files_become_notes_not_broken_players(eval_copy):
    ev = eval_copy
    idx = json.loads((ev / "audio" / "clips.json").read_text())
    gone = ev / "audio" / idx["groups"][-1]["clips"][-1]["wav"]
    gone.unlink()
    html = write_page(ev).read_text()
    assert len(parse(html).of("audio")) == sum(len(g["clips"]) for g in idx["groups"]) - 1
    assert f"missing: {gone}" in html


def test_an_evaluation_without_clips_says_how_to_get_them(eval_copy):
    shutil.rmtree(eval_copy / "audio")
    html = write_page(eval_copy).read_text()
    assert not parse(html).of("audio") and "has no audio/clips.json" in html


def test_missing_or_broken_evaluation_names_the_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        write_page(tmp_path)
    r = subprocess.run(
        [venv_bin("weaktok"), "report", str(tmp_path)],
        capture_output=True,
        text=True,
        env=cpu_env(),
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and str(tmp_path / "eval" / "table1.json") in r.stderr
    (tmp_path / "table1.json").write_text("{")
    with pytest.raises(ValueError, match="table1.json: unreadable"):
        write_page(tmp_path)
