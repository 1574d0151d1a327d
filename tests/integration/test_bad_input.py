"""Bad input, as a hostile but ordinary user writes it: every case is exit 2 with a message
that names what is wrong — never a traceback, never a silent acceptance."""

from __future__ import annotations

import json

import pytest

from robustad_bench.harness.cli import main

BASE = """name: probe
datasets:
  - {name: digits, categories: ["1"], image_size: 32, n_train: 10, n_test_normal: 6, n_test_anomalous: 6}
detectors:
  - {name: patchcore, backbone: resnet18, input_size: 32}
attacks:
  - {name: none}
  - {name: pgd, eps: 8/255, steps: 2}
"""
PGD = "{name: pgd, eps: 8/255, steps: 2}"
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)) + "name: probe\ndescription: *i\n"


def swap(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


def attack(text: str) -> str:
    return swap(PGD, text)


# (case id, suite text, phrase the message must contain); run through `validate`
SUITES = [
    ("name-not-a-string", swap("{name: patchcore,", "{name: [patchcore],"), "must be a registered name"),
    ("eps-nan", attack("{name: pgd, eps: .nan}"), "finite"),
    ("eps-inf", attack("{name: pgd, eps: .inf}"), "finite"),
    ("eps-empty-list", attack("{name: pgd, eps: []}"), "empty list"),
    ("categories-empty", swap('categories: ["1"]', "categories: []"), "empty list"),
    ("n-train-negative", swap("n_train: 10", "n_train: -5"), "at least 1"),
    ("eot-zero", attack("{name: pgd, eps: 8/255, eot: 0}"), "at least 1"),
    ("image-size-zero", swap("image_size: 32", "image_size: 0"), "at least 1"),
    ("seed-negative", "seed: -1\n" + BASE, "seed must be an integer"),
    ("entropy-weight-negative", attack("{name: pgd, eps: 8/255, entropy_weight: -1}"), "at least 0"),
    ("blur-sigma-negative", swap("input_size: 32}", "input_size: 32, blur_sigma: -1}"), "at least 0"),
    ("unknown-layer", swap("input_size: 32}", "input_size: 32, layers: [layer9]}"), "no feature layer"),
    ("duplicate-yaml-key", swap("name: probe", "name: probe\nname: other"), "given twice"),
    ("name-absolute", swap("name: probe", "name: /tmp/evil"), "folder name"),
    ("name-dotdot", swap("name: probe", "name: ../evil"), "folder name"),
    ("fit-batch-size-zero", swap("input_size: 32}", "input_size: 32, fit_batch_size: 0}"), "at least 1"),
    ("steps-zero", attack("{name: pgd, eps: 8/255, steps: 0}"), "at least 1"),
    ("seed-repeated", "seed: [0, 0]\n" + BASE, "more than once"),
    ("category-repeated", swap('categories: ["1"]', 'categories: ["1", "1"]'), "more than once"),
    ("attack-repeated", attack(PGD + "\n  - " + PGD), "also given by"),
    ("alias-bomb", ALIAS_BOMB + BASE.removeprefix("name: probe\n"), "aliases expand"),
    ("grid-too-large", attack("{name: pgd, eps: [" + ", ".join(f"{i}/1000" for i in range(1, 201)) + "], steps: ["
                              + ", ".join(str(i) for i in range(1, 201)) + "], step_size: [" + ", ".join(f"{i}/1000" for i in range(1, 201))
                              + "], restarts: [" + ", ".join(str(i) for i in range(1, 201)) + "]}"), "max_cells"),
    ("unknown-top-level-key", "seeds: 1\n" + BASE, "unknown top-level key"),
    ("unknown-attack-key", attack("{name: pgd, eps: 8/255, stepz: 3}"), "unknown key 'stepz'"),
    ("misspelled-detector", swap("{name: patchcore,", "{name: patchcor,"), "Did you mean 'patchcore'"),
    ("knowledge-mismatch", attack("{name: pgd, eps: 8/255, knowledge: mask}"), "allowed: 'label'"),
    ("caa-bad-policy", attack("{name: caa, eps: 8/255, policy: apgd}"), "NAME:STEPS"),
    ("caa-unusable-stage", attack("{name: caa, eps: 8/255, policy: 'apgd:5 > square:5'}"), "cannot run"),
    ("autoattack-unknown-part", attack("{name: autoattack, eps: 8/255, parts: apgd+dlr}"), "unknown autoattack part"),
    ("sea-unknown-loss", attack("{name: sea, eps: 8/255, losses: ce+dice}"), "unknown SEA loss"),
    ("transfer-unknown-source", attack("{name: transfer, eps: 8/255, source: nobody}"), "not a detector of this suite"),
    ("transfer-bad-crafter", attack("{name: transfer, eps: 8/255, source: patchcore, attack: noise}"), "transfer crafts with"),
    ("a3-no-pgd-steps", attack("{name: a3, eps: 8/255, steps: 5, adi_steps: 5}"), "adi_steps"),
    ("max-cells-zero", "max_cells: 0\n" + BASE, "positive integer"),
    ("eps-above-one", attack("{name: pgd, eps: 2}"), "must be in [0, 1]"),
    ("official-apgd-localization", attack("{name: apgd, eps: 8/255, impl: official, objective: localization}"), "impl 'official'"),
    ("not-a-mapping", "- just\n- a list\n", "must be a mapping"),
    ("invalid-yaml", "name: [unclosed\n", "not valid YAML"),
    ("no-detectors", swap("detectors:\n  - {name: patchcore, backbone: resnet18, input_size: 32}\n", "detectors: []\n"), "non-empty list"),
    ("detector-labels-clash", swap("  - {name: patchcore, backbone: resnet18, input_size: 32}\n",
                                   "  - {name: patchcore, backbone: resnet18, input_size: 32}\n  - {name: zarnd, label: patchcore}\n"),
     "share the label"),
    ("batch-size-zero", "batch_size: 0\n" + BASE, "must be an integer ≥ 1"),
    ("unknown-norm", attack("{name: pgd, eps: 8/255, norm: l1}"), "allowed: 'linf', 'l2'"),
    ("detector-is-os-system", swap("{name: patchcore,", '{name: "os:system",'), "never runs code"),
    ("eps-overflows-to-inf", attack("{name: pgd, eps: 1e400/1}"), "finite"),
    ("step-size-overflows-to-inf", attack("{name: pgd, eps: 8/255, step_size: 1.0e400}"), "expected float"),
    ("map-size-huge", "map_size: 1000000\n" + BASE, "in [1, 4096]"),
    ("headline-not-in-suite", "headline: {norm: l2, eps: 0.5}\n" + BASE, "no attack of the suite runs at l2"),
    ("label-empty", swap("{name: patchcore,", "{name: patchcore, label: '',"), "non-empty string"),
    ("label-mapping", swap("{name: patchcore,", "{name: patchcore, label: {a: 1},"), "non-empty string"),
    ("description-list", "description: [a, b]\n" + BASE, "must be a string"),
    ("deeply-nested-list", "description: " + "[" * 20000 + "]" * 20000 + "\n" + BASE.removeprefix("name: probe\n"), "too deeply"),
]


@pytest.mark.parametrize("text, phrase", [c[1:] for c in SUITES], ids=[c[0] for c in SUITES])
def test_bad_suites_are_exit_2_with_a_message(text, phrase, tmp_path, capsys):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err, err


def test_mvtec_categories_outside_the_root_are_refused(tmp_path, capsys):
    for category in ("../elsewhere", "/etc"):
        path = tmp_path / "suite.yaml"
        path.write_text(swap('{name: digits, categories: ["1"], image_size: 32, n_train: 10, n_test_normal: 6, n_test_anomalous: 6}',
                             f'{{name: mvtec, root: {tmp_path}, categories: ["{category}"]}}'))
        assert main(["validate", str(path)]) == 2
        assert "folder names under root" in capsys.readouterr().err


def files(tmp_path):
    (tmp_path / "suite.yaml").write_text(BASE)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "not-utf8.yaml").write_bytes(b"name: x\n\xff\xfe\n")
    (tmp_path / "empty").mkdir()
    row = {"cell_id": "x", "status": "ok", "suite": "s", "detector": "d", "dataset": "t", "category": "c", "attack": "none",
           "eps": 0.0, "metrics": {}}
    for name, bad in (("metrics-string", {"metrics": "high"}), ("eps-string", {"eps": "8/255"}),
                      ("only-cell-id", None), ("escaping-cell-id", {"cell_id": "../../escape"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text(json.dumps({"cell_id": "x"} if bad is None else row | bad) + "\n")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "results.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "linked" / "leaderboard.md").symlink_to(tmp_path / "a-file")
    (tmp_path / "run-linked").mkdir()
    (tmp_path / "run-linked" / "results.jsonl").symlink_to(tmp_path / "a-file")
    (tmp_path / "loc-only.yaml").write_text(swap("  - {name: none}\n", "").replace(PGD, "{name: fgsm, eps: 8/255, objective: localization}"))


# (case id, argv with {tmp} for the test's folder, phrase); run through the CLI
COMMANDS = [
    ("device-bogus", "run {tmp}/suite.yaml --device bogus", "not a device"),
    ("out-is-a-file", "run {tmp}/suite.yaml --out {tmp}/a-file", "is a file"),
    ("cache-is-a-file", "run {tmp}/suite.yaml --out {tmp}/o --cache {tmp}/a-file", "is a file"),
    ("only-matches-nothing", "run {tmp}/suite.yaml --out {tmp}/o --cache {tmp}/c --only nothing*", "matches none"),
    ("zero-cells", "run {tmp}/loc-only.yaml --out {tmp}/o --cache {tmp}/c", "0 cells"),
    ("workers-zero", "run {tmp}/suite.yaml --workers 0", "--workers"),
    ("local-backend-option", "run {tmp}/suite.yaml --out {tmp}/o --cache {tmp}/c --backend-option x=1", "not understood"),
    ("suite-is-a-folder", "validate {tmp}/empty", "is a folder"),
    ("suite-missing", "validate {tmp}/nope.yaml", "not found"),
    ("suite-not-utf8", "validate {tmp}/not-utf8.yaml", "not UTF-8"),
    ("prepare-negative-seed", "data prepare digits --seed -1", "--seed"),
    ("prepare-root-is-a-file", "data prepare textures --root {tmp}/a-file", "is a file"),
    ("check-mvtec-wrong-layout", "data check mvtec --root {tmp}/empty", "no category in MVTec layout"),
    ("prepare-unknown-dataset", "data prepare mvtek --root {tmp}/empty", "Did you mean"),
    ("render-nothing", "render {tmp}/empty", "no results"),
    ("render-tolerance-nan", "render {tmp}/empty --tolerance nan", "not a finite number"),
    ("render-tolerance-inf", "render {tmp}/empty --tolerance inf", "not a finite number"),
    ("prune-older-than-nan", "cache prune --cache {tmp}/empty --older-than nan", "not a finite number"),
    ("run-workers-text", "run {tmp}/suite.yaml --workers many", "not an integer"),
    ("render-metrics-string", "render {tmp}/metrics-string", "no results"),
    ("render-eps-string", "render {tmp}/eps-string", "no results"),
    ("render-row-only-cell-id", "render {tmp}/only-cell-id", "no results"),
    ("render-cell-id-escapes", "render {tmp}/escaping-cell-id", "no results"),
    ("render-site-is-a-file", "render {tmp}/linked --site {tmp}/a-file", "is a file"),
    ("render-through-a-link", "render {tmp}/linked", "is a symbolic link"),
    ("run-through-a-link", "run {tmp}/suite.yaml --out {tmp}/run-linked --cache {tmp}/c", "is a symbolic link"),
    ("check-detector-unknown-key", "check-detector patchcore --config nosuch=1", "unknown key 'nosuch'"),
    ("check-detector-wrong-type", "check-detector patchcore --config input_size=abc", "expected int"),
    ("check-detector-not-a-detector", "check-detector robustad_bench.harness.cli:main", "not a Detector subclass"),
    ("check-detector-os-system", "check-detector os:system", "never runs code"),
]


def exit_code(argv: list[str]) -> int:
    """``main``'s exit code, whether it returns it or argparse exits (a refused option value)."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


@pytest.mark.parametrize("argv, phrase", [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_bad_commands_are_exit_2_with_a_message(argv, phrase, tmp_path, capsys):
    files(tmp_path)
    assert exit_code([*argv.format(tmp=tmp_path).split(), *(["--no-progress"] if argv.startswith("run") else [])]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err, err


def test_the_table_has_at_least_forty_cases():
    assert len(SUITES) + len(COMMANDS) + 1 >= 40


def test_an_output_folder_that_is_itself_a_link_is_used(tmp_path, capsys):
    """``runs/`` on another disk is a link users make: only links inside the folder are refused."""
    files(tmp_path)
    (tmp_path / "link-to-run").symlink_to(tmp_path / "metrics-string")
    (tmp_path / "metrics-string" / "results.jsonl").write_text(json.dumps(
        {"cell_id": "x", "status": "ok", "suite": "s", "detector": "d", "dataset": "t", "category": "c", "attack": "none",
         "eps": 0.0, "metrics": {}}) + "\n")
    assert main(["render", str(tmp_path / "link-to-run")]) == 0, capsys.readouterr().err
    assert (tmp_path / "metrics-string" / "leaderboard.md").is_file()
