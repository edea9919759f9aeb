"""The extraction server's environment is an allow-list: nothing from the processor unless named."""

from __future__ import annotations

from services.processor.extraction.confine import DEFAULT_PATH, PRIVATE_DIR_NAMES, child_environment


def test_only_allow_listed_names_pass_and_private_dirs_are_forced() -> None:
    source = {
        "PATH": "/opt/bin:/usr/bin",
        "LANG": "de_DE.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "Europe/Berlin",
        "HOME": "/root",
        "TMPDIR": "/tmp",
        "KBINGEST_DATABASE_URL": "postgresql://u:secret@db/x",
        "KBINGEST_S3_SECRET_KEY": "secret",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_PROFILE": "prod",
        "OPENAI_API_KEY": "secret",
        "HTTPS_PROXY": "http://user:secret@proxy:3128",
        "PYTHONSTARTUP": "/evil.py",
        "LD_PRELOAD": "/evil.so",
    }
    env = child_environment(source, private_dir="/tmp/p", fixed={"DO_NOT_TRACK": "1"}, python_path=["/app", ""])
    assert env == {
        "PATH": "/opt/bin:/usr/bin",
        "LANG": "de_DE.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "Europe/Berlin",
        **dict.fromkeys(PRIVATE_DIR_NAMES, "/tmp/p"),
        "DO_NOT_TRACK": "1",
        "PYTHONPATH": "/app",
    }


def test_a_missing_path_gets_a_safe_default() -> None:
    env = child_environment({}, private_dir="/tmp/p", fixed={}, python_path=[])
    assert env["PATH"] == DEFAULT_PATH
    assert env["PYTHONPATH"] == ""
