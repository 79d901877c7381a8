"""The manifest writer: what it writes reads back as the same value (PyYAML, a YAML 1.1 reader
like the Go readers behind kubectl), for generated values and for the strings YAML likes to
turn into something else."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from distcb.launch.k8s.yaml_text import dump, dump_documents

TRICKY = [
    "",
    " ",
    "yes",
    "No",
    "ON",
    "off",
    "y",
    "n",
    "true",
    "False",
    "null",
    "~",
    "1",
    "-1",
    "0x1F",
    "1e3",
    ".5",
    ".inf",
    "-.inf",
    ".nan",
    "1_000",
    "0o17",
    "12:30",
    "1Gi",
    "500m",
    "2001-12-14",
    "-",
    "--",
    "---",
    "--world-size=2",
    "-x",
    "a: b",
    "a:b",
    "#c",
    "a #c",
    "'q'",
    '"q"',
    "[x]",
    "{x}",
    "*ref",
    "&anchor",
    "!tag",
    "%dir",
    "@at",
    "`tick",
    "|",
    ">",
    "?",
    ",",
    "trail ",
    " lead",
    "multi\nline",
    "tab\there",
    "é",
    "ümlaut",
    "日本",
    "$(DISTCB_HOST):8765",
    "metadata.labels['jobset.sigs.k8s.io/job-index']",
    "nvidia.com/gpu",
    "back\\slash",
    "\x07bell",
    "=",
    "<<",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_read_back_as_strings(text):
    document = {"key": text, text or "k": [text], "list": [{"name": text}]}
    assert yaml.safe_load(dump(document)) == document


json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=60), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_any_manifest_shaped_value_round_trips(value):
    assert yaml.safe_load(dump(value)) == value


def test_documents_and_comments():
    text = dump_documents([(["first"], {"a": 1}), ([], {"b": [], "c": {}})], header=["head"])
    assert text == "# head\n---\n# first\na: 1\n---\nb: []\nc: {}\n"
    assert list(yaml.safe_load_all(text)) == [{"a": 1}, {"b": [], "c": {}}]


def test_k8s_style_block_layout():
    assert dump({"spec": {"containers": [{"name": "w", "args": ["-x", "z"]}]}}) == (
        'spec:\n  containers:\n    - name: w\n      args:\n        - "-x"\n        - z\n'
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"cpu": 0.5}, "write Kubernetes quantities as strings"),
        ({1: "a"}, "mapping keys must be strings"),
        ({"x": object()}, "received object"),
    ],
)
def test_values_yaml_would_not_keep_are_refused(value, message):
    with pytest.raises(TypeError, match=message):
        dump(value)


def test_keys_longer_than_yaml_allows_are_refused():
    with pytest.raises(ValueError, match="at most 1024 characters"):
        dump({"k" * 1025: 1})
