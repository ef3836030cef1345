"""The layers of the house hold: no module imports upward in the README's layer table, no modules
import one another in a circle, and the front ends import only the face (and what they may read).

The imports are read from the source with `ast` (support/imports.py), top-level, TYPE_CHECKING
and function-local ones alike. Each rule is also shown failing on a small planted tree.
"""

from __future__ import annotations

from pathlib import Path

import postroom

from support.imports import Edge, cycles, import_edges, outside, readme_layers, upward

SRC = Path(postroom.__file__).parent
README = Path(__file__).parents[2] / "README.md"
LAYERS = readme_layers(README.read_text(encoding="utf-8"), "postroom")

#: What a front end may import besides its own package: the face, the vocabulary, profile reading.
FRONT_END_READS = ("postroom.", "postroom.session.", "postroom.mapi", "postroom.mime.", "postroom.profile.")
#: `postroom store migrate|copy` administers stores, which no session opens.
STORE_COMMANDS_READ = ("postroom.storeadmin.",)

#: Function-local imports of postroom modules, each for a reason: start-up time (a command module
#: or the package's face must not load what `postroom --version` does not need), or an optional
#: dependency (psycopg, for the PostgreSQL store).
LOCAL_IMPORTS = {
    "postroom.cli.context → postroom.profile",  # start-up: only the commands that open a profile
    "postroom.cli.context → postroom.session",  # start-up: only the commands that log on
    "postroom.cli.messages → postroom.mime",  # start-up: the email package, for `export` only
    "postroom.cli.send → postroom.mime",  # start-up: the email package, for `send --eml` only
    "postroom.cli.spool → postroom.web.server",  # start-up: uvicorn, for `spooler --http` only
    "postroom.engine.serving → postroom.engine.listener",  # start-up: aiosmtpd, only where a listener runs
    "postroom.cli.sendmail → postroom.cli.context",  # start-up: click, not needed to reach the submit socket
    "postroom.cli.sysexits → postroom",  # start-up: postroom-sendmail loads the face only on an error
    "postroom.store → postroom.store.postgres",  # optional: psycopg
    "postroom.store.copy → postroom.store.postgres",  # optional: psycopg
    "postroom.storeadmin → postroom.store.postgres",  # optional: psycopg
}


def pair(problem: str) -> str:
    """`a → b (line 3): …` → `a → b`: the allow-lists name pairs, not lines."""
    return problem.split(" (line ")[0]


def test_the_readme_names_every_layer_of_the_house_in_order() -> None:
    names = [name for name, _ in LAYERS]
    assert names == ["mapi", "store", "transports", "spooler", "engine", "face", "front ends"]


def test_no_module_imports_from_a_higher_layer() -> None:
    assert upward(import_edges(SRC, "postroom"), LAYERS) == []


def test_no_modules_import_one_another_in_a_circle() -> None:
    assert cycles(import_edges(SRC, "postroom")) == []


def test_the_front_ends_import_only_the_face_and_what_they_read() -> None:
    edges = import_edges(SRC, "postroom")
    # The status page (web/) is a front end the CLI serves (`serve http`, `spooler --http`).
    own = ("postroom.cli", "postroom.__main__.", "postroom.web")
    store_commands = [e for e in edges if e.source == "postroom.cli.store"]
    others = [e for e in edges if e.source != "postroom.cli.store"]
    problems = [
        *outside(others, "postroom.cli", (*own, *FRONT_END_READS)),
        *outside(others, "postroom.__main__.", (*own, *FRONT_END_READS)),
        *outside(others, "postroom.web", ("postroom.web", *FRONT_END_READS)),
        *outside(store_commands, "postroom.cli", (*own, *FRONT_END_READS, *STORE_COMMANDS_READ)),
    ]
    assert problems == []


def test_imports_inside_functions_are_only_for_start_up_time_or_optional_dependencies() -> None:
    local = {f"{e.source} → {e.target}" for e in import_edges(SRC, "postroom") if e.local}
    assert local - LOCAL_IMPORTS == set()


# --- the checks themselves, on a planted tree --------------------------------------------------------

PLANTED_LAYERS = [("low", ("shop.low",)), ("high", ("shop.high",)), ("front", ("shop.front",))]


def plant(root: Path, files: dict[str, str]) -> Path:
    package = root / "shop"
    for name, text in {"__init__.py": "", "low/__init__.py": "", "high/__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package


def test_a_planted_upward_import_is_found(tmp_path: Path) -> None:
    package = plant(
        tmp_path,
        {
            "low/base.py": "from ..high import engine\n",  # the planted upward import
            "high/engine.py": "from ..low import base\n",
        },
    )
    edges = import_edges(package, "shop")
    assert [pair(p) for p in upward(edges, PLANTED_LAYERS)] == ["shop.low.base → shop.high.engine"]


def test_an_upward_import_inside_a_function_or_for_type_checking_is_found_too(tmp_path: Path) -> None:
    package = plant(
        tmp_path,
        {
            "low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from shop.high import b\n",
            "low/c.py": "def f():\n    import shop.high.b\n",
            "high/b.py": "",
        },
    )
    found = upward(import_edges(package, "shop"), PLANTED_LAYERS)
    assert sorted(pair(p) for p in found) == ["shop.low.a → shop.high.b", "shop.low.c → shop.high.b"]


def test_a_module_in_no_layer_is_found(tmp_path: Path) -> None:
    package = plant(tmp_path, {"stray.py": "from .low import base\n", "low/base.py": ""})
    (problem,) = upward(import_edges(package, "shop"), PLANTED_LAYERS)
    assert "shop.stray is in no layer" in problem


def test_a_planted_cycle_is_found(tmp_path: Path) -> None:
    package = plant(
        tmp_path,
        {
            "high/a.py": "from . import b\n",
            "high/b.py": "from .c import thing\n",
            "high/c.py": "from .a import other\n",  # closes the circle a → b → c → a
            "high/d.py": "from . import a\n",
        },
    )
    assert cycles(import_edges(package, "shop")) == [["shop.high.a", "shop.high.b", "shop.high.c"]]


def test_a_planted_front_end_import_of_a_lower_layer_is_found(tmp_path: Path) -> None:
    package = plant(
        tmp_path,
        {
            "front/cli.py": "from ..high import engine\nfrom ..low import words\n",
            "high/engine.py": "",
            "low/words.py": "",
        },
    )
    edges = import_edges(package, "shop")
    assert [pair(p) for p in outside(edges, "shop.front", ("shop.front", "shop.high"))] == [
        "shop.front.cli → shop.low.words"
    ]


def test_an_edge_names_its_line_and_whether_it_is_in_a_function() -> None:
    assert str(Edge("a", "b", 3, True)) == "a → b (line 3, in a function)"
