"""Run PEFT 0.21.2's own test suite against peft and against surgery (through the shim), and compare.

    python -m benchmarks.conformance.run                      # the full run: every in-scope file, both sides
    python -m benchmarks.conformance.run --files test_config.py --against surgery
    python -m benchmarks.conformance.run --slice ci --check   # CI: the slice's recorded passes must still pass
    python -m benchmarks.conformance.run --stored             # the table of every stored run, with failure reasons
    python -m benchmarks.conformance.run --record             # after a full run: choose the CI slice anew

The suite comes from PEFT's sdist on PyPI (its tests/ folder), unpacked under .conformance/ as the package
`peft_suite`; nothing of it is kept in this repository. A test is *in scope* when it passes with peft and
does not touch a method or option surgery does not claim (shim/peft/_scope.py). Results per side are written
to .conformance/all-<side>.json (merged over runs); the table printed is the one in docs/conformance.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = REPO / ".conformance"
SUITE = CACHE / "suite"
PEFT_VERSION = "0.21.2"

NO_HUB_FILES = ("test_custom_models.py", "test_config.py", "test_other.py", "test_initialization.py",
                "test_low_level_api.py", "test_lora_variants.py", "test_tuners_utils.py", "test_mapping.py",
                "test_helpers.py", "test_loraplus.py", "test_lora_conversion.py", "test_bufferdict.py",
                "test_vera.py", "test_boft.py", "test_target_parameters.py", "test_trainable_tokens.py")
MODEL_FILES = ("test_decoder_models.py", "test_encoder_decoder_models.py", "test_feature_extraction_models.py",
               "test_seq_classifier.py")
# The CI slice: a fixed list of tests that pass with surgery (ci_expected.txt), a few minutes on 2 cores: the small
# files whole, and every LoRA / prompt-learning case of the custom-model tests with one in CI_CUSTOM_EVERY of the rest.
CI_FILES = ("test_config.py", "test_mapping.py", "test_low_level_api.py", "test_other.py", "test_tuners_utils.py",
            "test_custom_models.py", "test_helpers.py", "test_loraplus.py", "test_lora_conversion.py",
            "test_bufferdict.py", "test_vera.py", "test_boft.py")
CI_CUSTOM_EVERY = 8
CI_EXPECTED = HERE / "ci_expected.txt"


def fetch_suite() -> Path:
    """PEFT's tests/ unpacked as the package .conformance/suite/peft_suite (downloaded once)."""
    package = SUITE / "peft_suite"
    if (package / "testing_common.py").exists():
        return package
    CACHE.mkdir(exist_ok=True)
    archive = CACHE / f"peft-{PEFT_VERSION}.tar.gz"
    if not archive.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"peft=={PEFT_VERSION}", "-d", str(CACHE)], check=True)
    prefix = f"peft-{PEFT_VERSION}/tests/"
    package.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            # Only regular files under tests/, with no path tricks: the archive is input, not trusted.
            if member.isfile() and member.name.startswith(prefix) and ".." not in member.name:
                target = package / member.name[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    (package / "__init__.py").touch()
    (SUITE / "pytest.ini").write_text(
        "[pytest]\naddopts = -p no:cacheprovider\nmarkers =\n    single_gpu_tests\n    multi_gpu_tests\n"
        "    regression\n    bitsandbytes\n")
    return package


def run_side(side: str, files, keyword: str | None, jobs: int, only: Path | None = None) -> dict:
    """Run the files with peft or with surgery; {nodeid: {"outcome", "reason"}}."""
    fetch_suite()
    results = CACHE / f"results-{side}-{os.getpid()}.json"   # runs may overlap: one file each
    results.unlink(missing_ok=True)
    paths = [str(HERE)] + ([str(HERE / "shim")] if side == "surgery" else []) + [str(REPO), str(SUITE)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "CONFORMANCE_RESULTS": str(results),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    from .hub_models import hub_env
    env.update(hub_env())
    if only is not None:   # the plugin keeps just these node ids
        env["CONFORMANCE_ONLY"] = str(only)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "conformance_plugin", "-c", str(SUITE / "pytest.ini"),
           "--rootdir", str(SUITE), "-o", "console_output_style=count", "-W", "ignore::DeprecationWarning",
           *([f"-n{jobs}"] if jobs > 1 else []), *(["-k", keyword] if keyword else []),
           *[f"peft_suite/{f}" for f in files]]
    print(f"[{side}] {' '.join(cmd[3:])}", flush=True)
    subprocess.run(cmd, cwd=SUITE, env=env, stdout=subprocess.DEVNULL if not os.environ.get("CONFORMANCE_VERBOSE")
                   else None)
    if not results.exists():
        raise SystemExit(f"the {side} run wrote no results (pytest could not start?); rerun with CONFORMANCE_VERBOSE=1")
    fresh = json.loads(results.read_text())
    results.unlink()
    # Runs of other files add up: the stored results of a side cover every file run so far.
    merged = load_side(side)
    merged.update(fresh)
    (CACHE / f"all-{side}.json").write_text(json.dumps(merged, indent=0, sort_keys=True))
    return fresh


def load_side(side: str) -> dict:
    stored = CACHE / f"all-{side}.json"
    return json.loads(stored.read_text()) if stored.exists() else {}


def file_of(nodeid: str) -> str:
    return nodeid.split("::")[0].split("/")[-1]


def compare(peft: dict, ours: dict) -> dict[str, Counter]:
    table: dict[str, Counter] = {}
    for nodeid, entry in peft.items():
        row = table.setdefault(file_of(nodeid), Counter())
        row["collected"] += 1
        mine = ours.get(nodeid, {"outcome": "not run"})
        if entry["outcome"] != "passed":
            continue
        row["passed with peft"] += 1
        if mine["outcome"] == "out_of_scope":
            row["out of scope"] += 1
            continue
        row["in scope"] += 1
        row["passed with surgery"] += mine["outcome"] == "passed"
    return table


def print_table(table: dict[str, Counter]) -> None:
    columns = ("passed with peft", "out of scope", "in scope", "passed with surgery")
    print(f"| file | {' | '.join(columns)} | share |")
    print("|---|" + "---:|" * (len(columns) + 1))
    total = Counter()
    for name in sorted(table):
        total.update(table[name])
        row = table[name]
        print(f"| {name} | {' | '.join(str(row[c]) for c in columns)} | {_share(row)} |")
    print(f"| **all** | {' | '.join(str(total[c]) for c in columns)} | {_share(total)} |")


def _share(row: Counter) -> str:
    return f"{100 * row['passed with surgery'] / row['in scope']:.1f}%" if row["in scope"] else "-"


def failures(peft: dict, ours: dict) -> dict[str, list[str]]:
    """{reason: [nodeid, ...]} for in-scope tests that fail with surgery, most common reason first."""
    grouped: dict[str, list[str]] = {}
    for nodeid, entry in peft.items():
        mine = ours.get(nodeid, {"outcome": "not run"})
        if entry["outcome"] == "passed" and mine["outcome"] not in ("passed", "out_of_scope"):
            grouped.setdefault(mine.get("reason", mine["outcome"]), []).append(nodeid)
    return dict(sorted(grouped.items(), key=lambda kv: -len(kv[1])))


def ci_selection(results: dict) -> list[str]:
    """The CI slice from a full run's results: tests of CI_FILES that passed with surgery."""
    passed = sorted(n for n, e in results.items() if e["outcome"] == "passed" and file_of(n) in CI_FILES)
    keep = []
    for i, nodeid in enumerate(passed):
        lora_or_prompt = any(w in nodeid for w in ("LoRA", "Lora", "lora", "Prompt", "Prefix"))
        if file_of(nodeid) != "test_custom_models.py" or lora_or_prompt or i % CI_CUSTOM_EVERY == 0:
            keep.append(nodeid)
    return keep


def expected_ci() -> list[str]:
    return [line for line in CI_EXPECTED.read_text().splitlines() if line and not line.startswith("#")]


def check(ours: dict) -> int:
    """CI: every test recorded in ci_expected.txt passes again."""
    expected = expected_ci()
    broken = [n for n in expected if ours.get(n, {}).get("outcome") != "passed"]
    print(f"conformance slice: {len(expected) - len(broken)} of {len(expected)} recorded passes hold")
    for nodeid in broken[:50]:
        print(f"  REGRESSED {nodeid}: {ours.get(nodeid, {}).get('reason', 'not run')}")
    return 1 if broken else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="*", help="test files (default: every in-scope file)")
    parser.add_argument("--hub-files", action="store_true", help="only the model files (tiny models, local Hub)")
    parser.add_argument("--slice", choices=["ci"], help="the CI slice")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--against", choices=["both", "peft", "surgery"], default="both")
    parser.add_argument("--check", action="store_true", help="with --slice ci: fail if a recorded pass fails")
    parser.add_argument("--record", action="store_true", help="choose the CI slice from the stored full run")
    parser.add_argument("--stored", action="store_true", help="compare the stored results of every run so far")
    parser.add_argument("--failures", type=int, default=40, help="failure reasons to print")
    parser.add_argument("-n", "--jobs", type=int, default=min(os.cpu_count() or 1, 8))
    args = parser.parse_args(argv)
    files, keyword = args.files, args.keyword
    if args.record:   # the CI slice, chosen from the stored results of a full run
        chosen = ci_selection(load_side("surgery"))
        CI_EXPECTED.write_text("# PEFT tests of the CI slice, recorded passing with surgery "
                               "(python -m benchmarks.conformance.run --record, after a full run)\n"
                               + "\n".join(chosen) + "\n")
        print(f"recorded {len(chosen)} tests in {CI_EXPECTED.name}")
        return 0
    if args.slice == "ci":
        expected = expected_ci()
        only = CACHE / "ci-only.txt"
        fetch_suite()
        only.write_text("\n".join(expected))
        files = sorted({file_of(n) for n in expected})
        return check(run_side("surgery", files, None, args.jobs, only=only))
    files = files or (MODEL_FILES if args.hub_files else NO_HUB_FILES + MODEL_FILES)
    if args.stored:
        peft, ours = load_side("peft"), load_side("surgery")
        print_table(compare({n: e for n, e in peft.items() if n in ours}, ours))
        for reason, nodeids in list(failures(peft, ours).items())[:args.failures]:
            print(f"{len(nodeids):5d}  {reason}\n       e.g. {nodeids[0]}")
        return 0
    sides = ("peft", "surgery") if args.against == "both" else (args.against,)
    results = {side: run_side(side, files, keyword, args.jobs) for side in sides}
    if "peft" not in results:   # compare with the stored peft run of the same tests
        stored = load_side("peft")
        results["peft"] = {n: stored[n] for n in results["surgery"] if n in stored}
        if not results["peft"]:
            print(Counter(e["outcome"] for e in results["surgery"].values()))
            return 0
    if "surgery" not in results:
        print(Counter(e["outcome"] for e in results["peft"].values()))
        return 0
    print_table(compare(results["peft"], results["surgery"]))
    for reason, nodeids in list(failures(results["peft"], results["surgery"]).items())[:args.failures]:
        print(f"{len(nodeids):5d}  {reason}\n       e.g. {nodeids[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
