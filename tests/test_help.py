"""`python -m benchmark --help`: every key with its one-line description from the schemas."""
from __future__ import annotations

import pytest

from benchmark.__main__ import main
from benchmark.help import field_docs


def _described(text: str, key: str) -> str:
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(f"{key} = "))
    return lines[i + 1].strip() if i + 1 < len(lines) and lines[i + 1].startswith("    ") else ""


def test_help_lists_every_key_with_its_schema_description(capsys):
    main(["method=diffseg", "--help"])
    out = capsys.readouterr().out
    assert "== Config groups" in out and "method: " in out
    assert _described(out, "method.kl_threshold").startswith("KL merge threshold")
    assert _described(out, "method.extract.timestep") == "UNet timestep of the single pass"
    assert _described(out, "run.report").startswith("at the end of the run write its figures")
    assert _described(out, "cache.dtype").startswith("storage dtype of cached attention")


def test_help_follows_the_chosen_method_and_inherited_fields(capsys):
    main(["method=seediff_code", "--help"])
    out = capsys.readouterr().out
    assert "method.kl_threshold" not in out
    assert _described(out, "method.candidates")  # an OpenVocabSettings field, inherited
    from methods.seediff import SeeDiffCodeParams, SeeDiffParams

    docs = field_docs(SeeDiffCodeParams)
    assert set(field_docs(SeeDiffParams)) <= set(docs)


def test_help_with_a_bad_override_prints_the_help_then_the_problem(capsys):
    main(["method.no_such_key=1", "--help"])  # returns: exit status 0
    captured = capsys.readouterr()
    out = captured.out
    assert _described(out, "method.kl_threshold").startswith("KL merge threshold")  # the help itself
    problems = out[out.index("== This config would be refused at run time"):]
    assert "Unknown config key 'method.no_such_key'" in problems and "Traceback" not in out + captured.err


def test_help_of_a_method_with_missing_required_keys_prints_the_help(capsys):
    """Leftover item 6: `--help method=diffseg_semantic` printed only the candidates_file error."""
    main(["--help", "method=diffseg_semantic"])
    out = capsys.readouterr().out
    assert _described(out, "method.match_classes").startswith("nouns may name")
    assert _described(out, "method.candidates_file").startswith("JSON {image_id: {\"caption\"")
    assert _described(out, "method.clip_model").startswith("CLIP model")  # CandidateFilterSettings, inherited
    tail = out[out.index("== This config would be refused at run time"):]
    assert "method.candidates_file=PATH" in tail
    assert out.index("== Keys") < out.index("== This config would be refused")


def test_help_of_a_valid_config_lists_no_problems(capsys):
    main(["--help"])
    assert "would be refused" not in capsys.readouterr().out


def test_help_with_an_unknown_group_option_says_so_without_traceback(capsys):
    with pytest.raises(SystemExit) as exc:  # nothing composed: no help to print
        main(["method=no_such_method", "--help"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no_such_method" in err and "Traceback" not in err
