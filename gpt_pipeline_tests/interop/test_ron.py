"""Known-answer tests for gpt_pipeline.interop.ron: the RON subset gpt-rs's files use."""

import math
import re

import pytest

from gpt_pipeline.interop.ron import Char, RonError, RonStruct, load, loads
from gpt_pipeline.interop.ron_write import dumps


def test_anonymous_struct_with_every_number_form():
    text = """(
        vocab_size: 2048,
        learning_rate: 2e-4,
        big: 1.5E+3,
        negative: -0.25,
        leading_dot: .5,
        hex: 0xFF, octal: 0o17, binary: 0b101, grouped: 1_000_000,
        plus: +7, inf_: inf, neg_inf: -inf,
    )"""
    value = loads(text)
    assert isinstance(value, RonStruct) and value.name is None
    assert value == {"vocab_size": 2048, "learning_rate": 0.0002, "big": 1500.0, "negative": -0.25,
                     "leading_dot": 0.5, "hex": 255, "octal": 15, "binary": 5, "grouped": 1000000,
                     "plus": 7, "inf_": math.inf, "neg_inf": -math.inf}
    assert type(value["vocab_size"]) is int and type(value["learning_rate"]) is float
    assert math.isnan(loads("NaN"))


def test_named_struct_and_named_tuple():
    value = loads("TransformerConfig(head_count: 4, pair: Point(1, 2))")
    assert value.name == "TransformerConfig"
    assert value == {"head_count": 4, "pair": (1, 2)}


def test_maps_lists_tuples_options_unit():
    assert loads("{'a': 0, 'b': 1}") == {"a": 0, "b": 1}
    assert loads("{0: 'a', 1: 'b',}") == {0: "a", 1: "b"}
    assert loads("{(1, 2): 3}") == {(1, 2): 3}
    assert loads("[[1, 2], [], [3,]]") == [[1, 2], [], [3]]
    assert loads("[(from: (5, 4), to: 6)]") == [{"from": (5, 4), "to": 6}]
    assert loads("(1, 'x', \"y\", true, false)") == (1, "x", "y", True, False)
    assert loads("(a: Some(3), b: None, c: ())") == {"a": 3, "b": None, "c": ()}
    assert loads("[]") == [] and loads("{}") == {} and loads("[ ]") == []


def test_char_and_string_escapes():
    assert loads(r"['\n', '\t', '\\', '\'', '\"', '\u{e9}', '\x41', '\0', ' ']") == [
        "\n", "\t", "\\", "'", '"', "é", "A", "\0", " "]
    assert loads(r'"a\tb\nc \"q\" \\ \' \u{1F600} \u00e9 \/ \r"') == 'a\tb\nc "q" \\ \' \U0001F600 é / \r'
    assert isinstance(loads("'a'"), Char) and not isinstance(loads('"a"'), Char)
    # ron 0.8 writes a newline char unescaped between the quotes
    assert loads("{'\n': 3}") == {"\n": 3}
    assert loads('r#"raw "quoted" \\n"#') == 'raw "quoted" \\n'
    assert loads("\"multi\nline\"") == "multi\nline"
    assert loads("'日'") == "日"


def test_comments_attributes_and_whitespace():
    text = """#![enable(implicit_some)]
    // the config
    /* a block /* nested */ comment */
    (a: 1, // trailing
     b: [1, /* inside a list */ 2])"""
    assert loads(text) == {"a": 1, "b": [1, 2]}


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2", "line 1, column 6: expected ',' or ']', found end of input"),
        ("(a: 1,\n b: 2,\n c 3)", "line 3, column 4: expected ':', found '3'"),
        ("(a: 1\n  b: 2)", "line 2, column 3: expected ',' or ')', found 'b'"),
        ("(a: 1, a: 2)", "line 1, column 8: duplicate field 'a'"),
        ("{1: 2,\n1: 3}", "line 2, column 1: duplicate map key 1"),
        ("{[1]: 2}", "line 1, column 2: a map key must be a scalar or a tuple, got a list"),
        ("'ab'", "line 1, column 1: char literal holds more than one character"),
        ("''", "line 1, column 1: empty char literal"),
        ('x: "abc', "line 1, column 1: unsupported bare identifier 'x'"),
        ('["abc', "line 1, column 2: unterminated string"),
        ("  /* open", "line 1, column 3: unterminated block comment"),
        ("['\\q']", "line 1, column 3: unknown escape \\q in a char literal"),
        ('"\\u{110000}"', "line 1, column 2: escape '\\\\u{110000}' is not a Unicode scalar value"),
        ('"\\u{d800}"', "line 1, column 2: escape '\\\\u{d800}' is not a Unicode scalar value"),
        ('"\\uZZZZ"', "line 1, column 2: invalid escape"),
        ("[12abc]", "line 1, column 2: invalid number '12a'"),
        ("[1,,2]", "line 1, column 4: expected a value, found ','"),
        ("(1) 2", "line 1, column 5: unexpected '2' after the value"),
        ("", "line 1, column 1: expected a value, found end of input"),
        ("[-]", "line 1, column 2: expected a number, found '-'"),
        ("[\n\n   @]", "line 3, column 4: expected a value, found '@'"),
        ("[1, é]", "line 1, column 5: expected a value, found 'é'"),
    ],
)
def test_bad_input_names_line_and_column(text, message):
    with pytest.raises(RonError, match="^" + re.escape(message)):
        loads(text)


def test_ron_error_is_a_value_error_and_load_names_the_file(tmp_path):
    path = tmp_path / "bad.ron"
    path.write_text("(a: 1,\n b: [1, 2)\n")
    with pytest.raises(ValueError, match=r"bad\.ron: line 2, column 10: expected ',' or '\]', found '\)'"):
        load(path)


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(RonError, match="nested more than"):
        loads("[" * 1000 + "]" * 1000)


def test_dumps_known_answer_and_round_trip():
    value = RonStruct({
        "char_to_id": {Char("\n"): 0, Char("'"): 1, Char("é"): 2},
        "rate": 0.05, "lr": 1e-05, "whole": 2.0, "count": 3, "flag": True, "name": 'say "hi"\n',
        "pairs": [RonStruct({"from": (0, 1), "to": 3})],
        "data": [[1, 2], []],
    })
    text = dumps(value)
    assert text == (
        "(\n"
        "    char_to_id: {'\\n': 0, '\\'': 1, 'é': 2},\n"
        "    rate: 0.05,\n"
        "    lr: 1e-05,\n"
        "    whole: 2.0,\n"
        "    count: 3,\n"
        "    flag: true,\n"
        '    name: "say \\"hi\\"\\n",\n'
        "    pairs: [\n"
        "        (from: (0, 1), to: 3),\n"
        "    ],\n"
        "    data: [\n"
        "        [1, 2],\n"
        "        [],\n"
        "    ],\n"
        ")"
    )
    assert loads(text) == value
    assert dumps(RonStruct({"a": 1}, name="Config")) == "Config(\n    a: 1,\n)"
    assert dumps([RonStruct({"a": 1}, name="Config")]) == "[\n    Config(a: 1),\n]"
    assert dumps([math.inf, -math.inf, None]) == "[inf, -inf, None]"


def test_dumps_refuses_what_ron_cannot_hold():
    with pytest.raises(ValueError, match="cannot write a set"):
        dumps({1, 2})
    with pytest.raises(ValueError, match="one character"):
        dumps(Char("ab"))


def test_large_integer_lists_take_the_fast_path_and_stay_exact():
    data = [[(i * 7919 + j) % 2048 for j in range(300)] for i in range(2000)]  # 600k ids
    text = dumps(RonStruct({"encoded_data": data}))
    assert loads(text) == {"encoded_data": data}
    # a malformed element inside an all-integer-looking list still reports where it is
    with pytest.raises(RonError, match="line 1, column 7: expected ',' or ']', found '3'"):
        loads("[1, 2 3]")


def test_load_reads_utf8_with_or_without_a_byte_order_mark(tmp_path):
    path = tmp_path / "c.ron"
    path.write_bytes("\ufeff(name: 'é')".encode("utf-8"))
    assert load(path) == {"name": "é"}
    path.write_bytes("(name: 'é')".encode("utf-8"))
    assert load(path) == {"name": "é"}
