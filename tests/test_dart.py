"""DART v1.1.1 (../shared/data/dart: the dev JSON and the test XML): its counts, and its tables linearized as the
authors' code does (`subject : property : object`, the property lowercased, triples joined by ` | `)."""
import pytest

from data import load_examples


@pytest.fixture(scope="module")
def dart_dir(shared):
    return shared / "data" / "dart"


def test_dart_counts(dart_dir):
    dev = load_examples("dart", "dev", dart_dir)
    assert (len(dev), sum(len(ex.references) for ex in dev)) == (2768, 6980)
    assert len(load_examples("dart", "test", dart_dir)) == 5097  # the XML's entries


def test_dart_linearization_is_the_authors(dart_dir):
    dev = load_examples("dart", "dev", dart_dir)
    # hand-checked against the JSON and against the authors' LineByLineTriplesTextDataset
    assert dev[0].table == ("Mars Hill College : joined : 1973 | "
                            "Mars Hill College : location : Mars Hill, North Carolina")
    assert dev[0].references == ("A school from Mars Hill, North Carolina, joined in 1973.",)
    assert dev[100].table == ("[TABLECONTEXT] : year : 2003 | [TABLECONTEXT] : [title] : Charlotte Eagles "
                              "Year-by-year | 2003 : open_cup : Did not qualify")


def test_dart_json_and_xml_read_alike(dart_dir, tmp_path):
    """The release's two forms of a split give the same examples: the test XML's first entry, written as JSON."""
    import json
    first = load_examples("dart", "test", dart_dir)[0]
    record = {"tripleset": [["Hawaii Five-O", "NOTES", "Episode: The Flight of the Jewels"],
                            ["[TABLECONTEXT]", "[TITLE]", "Jeff Daniels"],
                            ["[TABLECONTEXT]", "TITLE", "Hawaii Five-O"]],
              "subtree_was_extended": False,
              "annotations": [{"source": "WikiTableQuestions_lily",
                               "text": "Jeff Daniels played in the Hawaii Five-O episode The Flight of the Jewels"}]}
    (tmp_path / "dart-v1.1.1-full-test.json").write_text(json.dumps([record]))
    [from_json] = load_examples("dart", "test", tmp_path)
    assert (from_json.table, from_json.references) == (first.table, first.references)
