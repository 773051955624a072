"""jobs.validate_gremlin_csv on hand-made files: one good export, then one test per rule it claims.

Each bad case changes one thing in an otherwise good export and asserts the exact problems found
(file, line, rule), so a check that stops working, or one that fires on good data, fails a test.
"""

from __future__ import annotations

import bz2
import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs import validate_gremlin_csv as V
from jobs.common import external_duplicates as ed
from jobs.common.cli import EXIT_JOB_ERROR, EXIT_OK, run
from schemas import gremlin as G

GOOD_VERTICES = (
    "~id,~label,name:String(single),age:Int,born:Date,tags:String[],ok:Bool,h:Float\n"
    'v1,person,"Ann, ""the"" first",30,1990-01-02,a;b\\;c,true,1.5\n'
    'v2,person;admin,"multi\nline",,,,FALSE,-2E3\n'
    "v3,person,Bob,-7,2020-02-29T10:11:12Z,x,,\n"
)
GOOD_EDGES = (
    "~id,~from,~to,~label,weight:Double,since:Long\n"
    "e1,v1,v2,knows,0.5,1700000000000\n"
    "e2,v2,v3,knows,1.0E-5,\n"
    '"e,3",v3,v1,knows,,\n'
)


def write(path: Path, text: str | bytes, *, compression: str = "none") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    if compression == "gzip":
        data = gzip.compress(data)
    elif compression == "bzip2":
        data = bz2.compress(data)
    path.write_bytes(data)
    return path


def make_export(root: Path, vertices: str | bytes = GOOD_VERTICES, edges: str | bytes = GOOD_EDGES) -> Path:
    write(root / "vertices" / "part-00000.csv", vertices)
    write(root / "edges" / "part-00000.csv", edges)
    return root


def found(root: Path, **kwargs) -> list[tuple[str, int | None, str]]:
    result = V.validate_export(str(root / "vertices"), str(root / "edges"), **kwargs)
    return [(Path(p.file).name, p.line, p.rule) for p in result.problems]


def test_a_good_export_passes_plain_gzip_and_bzip2(tmp_path):
    assert found(make_export(tmp_path / "plain")) == []
    root = tmp_path / "compressed"
    write(root / "vertices" / "part-00000.csv.gz", GOOD_VERTICES, compression="gzip")
    write(root / "edges" / "part-00000.csv.bz2", GOOD_EDGES, compression="bzip2")
    result = V.validate_export(str(root / "vertices"), str(root / "edges"))
    assert result.problems == []
    assert result.records == {"vertex": 3, "edge": 3}


def test_no_files(tmp_path):
    (tmp_path / "vertices").mkdir()
    write(tmp_path / "edges" / "part-00000.csv", "~id,~from,~to\n")
    assert found(tmp_path) == [("vertices", None, "no_files")]


def test_non_data_files_under_a_prefix(tmp_path):
    root = make_export(tmp_path)
    write(root / "vertices" / "_SUCCESS", "")
    write(root / "vertices" / ".part-00000.csv.crc", b"crc")
    assert found(root) == [
        (".part-00000.csv.crc", None, "non_data_file"),
        ("_SUCCESS", None, "non_data_file"),
    ]


def test_compression_mismatches_archives_and_truncation(tmp_path):
    root = make_export(tmp_path)
    write(root / "vertices" / "part-00001.csv.gz", "~id\nv9\n")  # named .gz, plain text
    write(root / "vertices" / "part-00002.csv", "~id\nv8\n", compression="gzip")  # gzip without .gz
    write(root / "vertices" / "part-00003.csv.gz", gzip.compress(b"~id\nv7\nv6\n")[:-12])  # truncated
    write(root / "vertices" / "part-00004.zip", b"PK\x03\x04")
    assert found(root) == [
        ("part-00001.csv.gz", None, "compression"),
        ("part-00002.csv", None, "compression"),
        ("part-00003.csv.gz", None, "compression"),
        ("part-00004.zip", None, "compression"),
    ]


def test_encoding_invalid_utf8_and_byte_order_mark(tmp_path):
    bad = GOOD_VERTICES.encode().replace(b"Bob", b"B\xffb")
    assert found(make_export(tmp_path / "a", vertices=bad)) == [("part-00000.csv", 5, "encoding")]
    assert found(make_export(tmp_path / "b", vertices="\ufeff" + GOOD_VERTICES)) == [
        ("part-00000.csv", 1, "encoding")
    ]


def test_nul_character(tmp_path):
    root = make_export(tmp_path, vertices=GOOD_VERTICES.replace("Bob", "B\x00b"))
    assert found(root) == [("part-00000.csv", 5, "nul")]


def test_header_missing_in_an_empty_file(tmp_path):
    root = make_export(tmp_path)
    write(root / "edges" / "part-00001.csv", "")
    assert found(root) == [("part-00001.csv", None, "header_missing")]


@pytest.mark.parametrize(
    ("kind", "header"),
    [
        ("vertices", "~label,name:String\n"),  # no ~id
        ("vertices", "~id,~foo,name:String\n"),  # unknown system column
        ("vertices", "~id,~from,name:String\n"),  # an edge column in a vertex file
        ("vertices", "~id,~label,~label\n"),  # twice
        ("edges", "~id,~from,~label\n"),  # no ~to
    ],
)
def test_header_system_columns(tmp_path, kind, header):
    root = make_export(tmp_path)
    write(root / kind / "part-00001.csv", header)
    assert found(root) == [("part-00001.csv", 1, "header_system")]


@pytest.mark.parametrize(
    "column",
    ["first name:String", "age:Integer32", "tags:String(single)[]", "name:String", ":String", "a:Int(many)"],
)
def test_header_syntax(tmp_path, column):
    root = make_export(tmp_path)
    write(root / "vertices" / "part-00001.csv", f"~id,name:String,{column}\n")
    assert found(root) == [("part-00001.csv", 1, "header_syntax")]


def test_header_accepts_escaped_colons_cardinality_and_case_insensitive_types(tmp_path):
    root = make_export(tmp_path)
    write(
        root / "vertices" / "part-00001.csv",
        "~id,a\\:b:string(set),c:INT[],d:Boolean,e,f:datetime\nv9,x,1;2,true,y,2024-01-01\n",
    )
    assert found(root) == []


@pytest.mark.parametrize("column", ["w:Double[]", "w:Double(set)"])
def test_edge_properties_are_single_valued(tmp_path, column):
    root = make_export(tmp_path)
    write(root / "edges" / "part-00001.csv", f"~id,~from,~to,{column}\n")
    assert found(root) == [("part-00001.csv", 1, "edge_cardinality")]


@pytest.mark.parametrize(
    "line",
    [
        'v9,person,"he said \\"hi\\"",1,,,,\n',  # Spark's default backslash escape
        'v9,person,he said "hi",1,,,,\n',  # quote in an unquoted field
        'v9,person,"closed" late,1,,,,\n',  # text after the closing quote
        "v9,person,a\rb,1,,,,\n",  # bare carriage return
    ],
)
def test_quoting(tmp_path, line):
    root = make_export(tmp_path, vertices=GOOD_VERTICES + line)
    assert found(root) == [("part-00000.csv", 6, "quoting")]


def test_unterminated_quote_runs_to_the_end_of_the_file(tmp_path):
    root = make_export(tmp_path, vertices=GOOD_VERTICES + 'v9,person,"never closed,1,,,,\nv10,x,y,,,,,\n')
    assert found(root) == [("part-00000.csv", 6, "quoting")]


def test_field_count(tmp_path):
    root = make_export(tmp_path, edges=GOOD_EDGES + "e4,v1,v3,knows,0.1\n")
    assert found(root) == [("part-00000.csv", 5, "field_count")]


def test_blank_required_columns(tmp_path):
    root = make_export(
        tmp_path,
        vertices=GOOD_VERTICES + ",person,Nobody,,,,,\n",
        edges=GOOD_EDGES + "e4,v1,,knows,0.1,\n",
    )
    assert found(root) == [("part-00000.csv", 6, "blank_required"), ("part-00000.csv", 5, "blank_required")]


@pytest.mark.parametrize(
    "line",
    [
        "v9,p,n,1.5,,,,\n",  # Int
        "v9,p,n,3000000000,,,,\n",  # Int range
        "v9,p,n,,2024-13-01,,,\n",  # Date
        "v9,p,n,,,,yes,\n",  # Bool
        "v9,p,n,,,,,abc\n",  # Float
        "v9,p,n,,,,,1e39\n",  # Float range
    ],
)
def test_typed_values_parse_as_their_type(tmp_path, line):
    root = make_export(tmp_path, vertices=GOOD_VERTICES + line)
    assert found(root) == [("part-00000.csv", 6, "type")]


def test_array_elements_are_typed_one_by_one(tmp_path):
    root = make_export(tmp_path)
    write(root / "vertices" / "part-00001.csv", "~id,n:Int[]\nv8,1;2;3\nv9,1;x\n")
    assert found(root) == [("part-00001.csv", 3, "type")]


def test_non_finite_doubles_unless_allowed(tmp_path):
    root = make_export(tmp_path, edges=GOOD_EDGES + "e4,v1,v3,knows,NaN,\ne5,v3,v2,knows,-Infinity,\n")
    assert found(root) == [("part-00000.csv", 5, "non_finite"), ("part-00000.csv", 6, "non_finite")]
    assert found(root, allow_non_finite=True) == []


def test_value_too_large(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "MAX_VALUE_BYTES", 100)  # the rule, at a size a test can afford
    root = make_export(tmp_path, vertices=GOOD_VERTICES + "v9,p," + "é" * 60 + ",,,,,\n")
    assert found(root) == [("part-00000.csv", 6, "value_too_large")]


def test_duplicate_ids_across_files(tmp_path):
    root = make_export(tmp_path)
    write(root / "vertices" / "part-00001.csv", "~id,name:String\nv2,again\n")
    write(root / "edges" / "part-00001.csv.gz", '~id,~from,~to\n"e,3",v1,v2\n', compression="gzip")
    assert found(root) == [("part-00001.csv", 2, "duplicate_id"), ("part-00001.csv.gz", 2, "duplicate_id")]


def test_missing_vertex(tmp_path):
    root = make_export(tmp_path, edges=GOOD_EDGES + "e4,v1,ghost,knows,0.1,\ne5,nobody,v1,knows,0.1,\n")
    problems = V.validate_export(str(root / "vertices"), str(root / "edges")).problems
    assert [(p.line, p.rule, p.reason) for p in problems] == [
        (5, "missing_vertex", "~to 'ghost' is not a vertex ~id"),
        (6, "missing_vertex", "~from 'nobody' is not a vertex ~id"),
    ]


def test_cli_exit_codes_and_report(tmp_path):
    good = make_export(tmp_path / "good")
    args = [
        "--vertices",
        str(good / "vertices"),
        "--edges",
        str(good / "edges"),
        "--run-date",
        "2024-03-31",
        "--report-dir",
        str(tmp_path / "reports"),
    ]
    assert run(V.main, args) == EXIT_OK
    report = json.loads((tmp_path / "reports" / "validate" / "dt=2024-03-31.json").read_text())
    assert (report["ok"], report["records"], report["funnel"]["rows_out"]) == (
        True,
        {"vertex": 3, "edge": 3},
        6,
    )

    bad = make_export(tmp_path / "bad", edges=GOOD_EDGES + "e4,v1,ghost,knows,x,\n")
    args = [
        "--vertices",
        str(bad / "vertices"),
        "--edges",
        str(bad / "edges"),
        "--run-date",
        "2024-03-31",
        "--report-dir",
        str(tmp_path / "reports"),
    ]
    assert run(V.main, args) == EXIT_JOB_ERROR
    report = json.loads((tmp_path / "reports" / "validate" / "dt=2024-03-31.json").read_text())
    assert report["problems_by_rule"] == {"type": 1, "missing_vertex": 1}
    assert report["funnel"]["rejected_by_reason"] == {"type": 1}  # one bad record, counted once
    assert report["problems"] == [
        f"{bad / 'edges' / 'part-00000.csv'}:5: [type] weight:Double: 'x' is not a Double",
        f"{bad / 'edges' / 'part-00000.csv'}:5: [missing_vertex] ~to 'ghost' is not a vertex ~id",
    ]


# ------------------------------------------------------------------------------------ at scale, in parts
def plain_edges(first: int, count: int, *, vertices: int = 50) -> str:
    """``count`` plain (unquoted) edge rows with ids e<first>.., between v0..v<vertices - 1>."""
    rows = [
        f"e{i},v{i % vertices},v{(i * 7 + 1) % vertices},knows,{(i % 1000) / 1000},{i}\n"
        for i in range(first, first + count)
    ]
    return GOOD_EDGES.split("\n", 1)[0] + "\n" + "".join(rows)


def many_vertices(count: int = 50) -> str:
    return "~id,name:String\n" + "".join(f"v{i},n{i}\n" for i in range(count))


def test_duplicates_within_and_across_files_found_with_a_tiny_memory_budget(tmp_path):
    root = tmp_path
    write(root / "vertices" / "part-00000.csv", many_vertices())
    first = plain_edges(0, 1000).replace("\ne999,", "\ne17,")  # line 1001 repeats line 19
    write(root / "edges" / "part-00000.csv", first)
    write(root / "edges" / "part-00001.csv.gz", plain_edges(1000, 1000), compression="gzip")
    second = plain_edges(2000, 1000).replace("\ne2500,", "\ne1400,")  # line 502 repeats another file's
    write(root / "edges" / "part-00002.csv", second)
    for workers, budget in ((1, 256), (2, 256), (2, V.ed.DEFAULT_BUDGET_BYTES)):
        result = V.validate_export(
            str(root / "vertices"), str(root / "edges"), workers=workers, budget_bytes=budget
        )
        assert [(Path(p.file).name, p.line, p.rule, p.reason) for p in result.problems] == [
            ("part-00000.csv", 1001, "duplicate_id", "edge ~id 'e17' appears more than once"),
            ("part-00002.csv", 502, "duplicate_id", "edge ~id 'e1400' appears more than once"),
        ], (workers, budget)
        assert (result.problem_counts, result.records) == (
            {"duplicate_id": 2},
            {"vertex": 50, "edge": 3000},
        )


def test_repeated_keys_split_a_partition_over_the_budget_and_agree_with_a_count(tmp_path):
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 2**64, size=5000, dtype=np.uint64)
    keys[100:140] = keys[7]  # one key 41 times
    keys[4000] = keys[4999]
    truth = {key: times for key, times in Counter(keys.tolist()).items() if times > 1}
    for budget in (160, 2**20):
        folder = tmp_path / str(budget)
        folder.mkdir()
        writer = ed.RunWriter(str(folder), "t", budget)
        writer.add(np.zeros(keys.size, dtype=np.int64), keys)  # every key in partition 0
        writer.flush()
        assert dict(ed.repeated_keys(writer.runs, 0, str(folder), budget)) == truth
        assert len(writer.runs) == (1250 if budget == 160 else 1)  # 160 bytes buffer 4 pairs at a time
        assert sorted(path.name for path in folder.iterdir() if path.is_dir()) == []  # scratch removed


def test_equal_hashes_of_different_ids_are_not_duplicates(tmp_path, monkeypatch):
    def weak(strings):  # every id gets the same hash: each one is a suspect, only a reread tells them apart
        size = len(strings)
        return np.full(size, 7, dtype=np.uint64), np.full(size, 9, dtype=np.uint64)

    monkeypatch.setattr(V.ed, "string_hashes", weak)
    root = make_export(tmp_path, edges=GOOD_EDGES + "e2,v1,v3,knows,0.1,\n")
    result = V.validate_export(str(root / "vertices"), str(root / "edges"), workers=1)
    assert [(p.line, p.rule, p.reason) for p in result.problems] == [
        (5, "duplicate_id", "edge ~id 'e2' appears more than once")
    ]
    assert result.problem_counts == {"duplicate_id": 1}


def test_blocks_checked_whole_or_record_by_record_report_the_same_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(V, "BLOCK_BYTES", 97)  # many blocks; a quoted record spans a block boundary
    edges = plain_edges(0, 400).split("\n")
    edges[150] = edges[150].replace(",knows,", ',"kno\nws",')  # good: a quoted newline (one more line)
    edges[250] = edges[250].replace(",v", ",ghost", 1)  # ~from is not a vertex
    edges[300] = edges[300].replace(",knows,0.", ",knows,x")  # not a Double
    root = make_export(tmp_path, vertices=many_vertices(), edges="\n".join(edges))
    slow = []
    record_by_record = V._FileChecker.slow_block

    def recorded(self, block, first_line):
        slow.append((self.kind, first_line, first_line + block.count(b"\n")))
        return record_by_record(self, block, first_line)

    monkeypatch.setattr(V._FileChecker, "slow_block", recorded)
    result = V.validate_export(str(root / "vertices"), str(root / "edges"), workers=1)
    assert [(p.line, p.rule) for p in result.problems] == [(252, "missing_vertex"), (302, "type")]
    assert result.records == {"vertex": 50, "edge": 400}
    # only the blocks with the quoted record or a problem were checked record by record
    assert slow and all(
        kind == "edge" and any(first <= line < last for line in (151, 252, 302)) for kind, first, last in slow
    )


def test_an_ids_hash_does_not_depend_on_the_ids_beside_it():
    same_length = [f"product:sku{i:07d}" for i in range(300)]  # one length: hashed without a gather
    mixed = ["a", "bb", *same_length[:5], "é" * 9, *same_length[5:]]
    sliced = pa.array(["x", *mixed], pa.string()).slice(1)  # an offset into the buffers
    alone = [ed.string_hashes(pa.array([value])) for value in mixed]
    expected = [(int(first[0]), int(second[0])) for first, second in alone]
    for strings in (pa.array(mixed, pa.large_string()), sliced):
        first, second = ed.string_hashes(strings)
        assert list(zip(first.tolist(), second.tolist(), strict=True)) == expected
    first, second = ed.string_hashes(pa.array(same_length))
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == expected[2:7] + expected[8:]
    assert len(set(expected)) == len(mixed)  # different ids, different hashes


@pytest.mark.parametrize(
    ("label", "rule"),
    [(b"kn\xffows", "encoding"), (b"kn\x00ows", "nul"), (b"kn\rows", "quoting"), ("knöws".encode(), None)],
    ids=["bad-utf8", "nul", "cr", "good-utf8"],
)
def test_a_plain_file_with_an_odd_byte_is_judged_as_record_by_record(tmp_path, monkeypatch, label, rule):
    """No quote anywhere, so blocks take the compiled scan, which assumes no NUL or CR and valid UTF-8:
    the checks before it must send a block with an odd byte record by record, to the same verdict."""
    edges = plain_edges(0, 300).encode().replace(b"\ne150,v0,v1,knows,", b"\ne150,v0,v1," + label + b",")
    root = make_export(tmp_path, vertices=many_vertices(), edges=edges)
    compiled = V.validate_export(str(root / "vertices"), str(root / "edges"), workers=1)
    monkeypatch.setattr(V._FileChecker, "fast_block", lambda self, block: None)
    by_record = V.validate_export(str(root / "vertices"), str(root / "edges"), workers=1)
    found_lines = [(p.line, p.rule) for p in compiled.problems]
    assert found_lines == [(p.line, p.rule) for p in by_record.problems]
    assert found_lines == ([] if rule is None else [(152, rule)])
    assert compiled.records == by_record.records == {"vertex": 50, "edge": 300}
