"""The literal paths code names (kit/export/paths.py): read from source, never run."""

from __future__ import annotations

import ast

import pytest

from kit.export.paths import Use, literal_paths


def found(source: str, anchor: str = ".") -> set[tuple[str, str, bool]]:
    return {(p.path, p.use.value, p.folder) for p in literal_paths(ast.parse(source), anchor)}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("open('config.json')", {("config.json", "read", False)}),
        ("json.load(open('./cfg/a.json', encoding='utf-8'))", {("cfg/a.json", "read", False)}),
        ("open('out.txt', 'w')", {("out.txt", "write", False)}),
        ("open('log.txt', mode='a')", {("log.txt", "write", False)}),
        ("Path('prompts/x.txt').read_text()", {("prompts/x.txt", "read", False)}),
        ("Path('out').mkdir(exist_ok=True)", {("out", "write", False)}),
        ("Path('maybe.txt').exists()", {("maybe.txt", "use", False)}),
        ("pd.read_csv('data/t.csv')", {("data/t.csv", "read", False)}),
        ("np.load('w.npy')", {("w.npy", "read", False)}),
        ("img.save('result.png')", {("result.png", "write", False)}),
        ("AutoModel.from_pretrained('bert-base-uncased')", {("bert-base-uncased", "use", False)}),
        ("os.path.join(os.path.dirname(__file__), 'models.json')", {("helpers/models.json", "use", False)}),
        ("(Path(__file__).resolve().parent / 'data' / 'v.txt').read_text()", {("helpers/data/v.txt", "read", False)}),
        (
            "HERE = Path(__file__).parent\nVOCAB = HERE / 'vocab.txt'\nVOCAB.read_text()",
            {("helpers", "use", False), ("helpers/vocab.txt", "use", False), ("helpers/vocab.txt", "read", False)},
        ),
        ("open(f'prompts/{name}.txt')", {("prompts", "read", True)}),
        ("(Path('styles') / style).read_text()", {("styles", "use", True)}),
        ("os.listdir('assets')", {("assets", "read", True)}),
        ("open('/runpod-volume/model.bin')", set()),
        ("requests.get('https://example.com/x.json')", set()),
        ("json.loads('{\"a\": 1}')", set()),
        ("print('hello.txt')", set()),
        ("open('../outside.txt')", {("../outside.txt", "read", False)}),
    ],
)
def test_literal_paths(source, expected):
    assert found(source, "helpers") == expected


def test_lines_count_from_the_piece_offset():
    [path] = literal_paths(ast.parse("\n\nopen('a.txt')"), ".", offset=10)
    assert (path.path, path.use, path.line) == ("a.txt", Use.READ, 13)
