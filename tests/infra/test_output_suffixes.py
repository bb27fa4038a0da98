"""Issue 20: the files written beside each input, as the deployments name them, read from the real files.

The function's outputs (handler/objects.py) must be what Terraform's table says each OUTPUTS format writes (the
role's write permissions come from it), what the Terraform variables accept, and what no notification suffix
matches: S3 and MinIO compare suffixes case-sensitively, so ``.tif`` never sees ``<stem>.mask.TIF``. Terraform
evaluates the same rules itself, per setting, in infra/terraform/tests/outputs.tftest.hcl.
"""

from __future__ import annotations

import re

import pytest

from handler import objects
from handler.settings import DEFAULT_OUTPUT_FORMATS, OUTPUT_FORMATS, OUTPUT_MODES, Settings, parse_outputs
from tests.infra.test_knative_manifests import KNATIVE_DIR, literal_env, load_all
from tests.infra.test_terraform import OWN_OUTPUT_NAMES, TF_DIR, load_config, product_suffixes

STEM = "a/b/scene"


@pytest.fixture(scope="module")
def tf():
    return load_config(TF_DIR)


def every_output_key(input_key: str) -> set[str]:
    """Every key the function can write for ``input_key``: all formats under every OUTPUT_MODE, and its marker."""
    keys = {objects.error_key(input_key)}
    for mode in OUTPUT_MODES:
        keys |= set(objects.product_keys(input_key, OUTPUT_FORMATS, mode).values())
    return keys


def _condition_lists(condition: str) -> list[list[str]]:
    """The string-list literals of a Terraform condition: ``[".npy", ".json"]`` -> ``[".npy", ".json"]``."""
    return [re.findall(r'"([^"]*)"', body) for body in re.findall(r"\[((?:\s*\"[^\"]*\"\s*,?)+)\]", condition)]


# --- Terraform's table of outputs (iam.tf) is the code's naming


@pytest.mark.parametrize("mode", OUTPUT_MODES)
@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_terraform_output_table_names_what_the_code_writes(tf, fmt, mode):
    # GIVEN one OUTPUTS format and OUTPUT_MODE WHEN the code names its files and Terraform its table's entry
    written = {key.removeprefix(STEM) for key in objects.product_keys(f"{STEM}.tif", (fmt,), mode).values()}
    table = {
        tf.locals["cog_suffixes"][mode] if s == "${local.cog_suffix}" else s for s in tf.locals["product_suffixes"][fmt]
    }
    # THEN they are the same suffixes, case included (S3 compares them case-sensitively)
    assert table == written


def test_terraform_output_table_covers_every_format_and_mode(tf):
    assert set(tf.locals["product_suffixes"]) == set(OUTPUT_FORMATS)
    assert set(tf.locals["cog_suffixes"]) == set(OUTPUT_MODES)
    # AND every output the code can write is in it (the tests of the role's statements rely on the table)
    assert {s for suffixes in product_suffixes(tf).values() for s in suffixes} == set(OWN_OUTPUT_NAMES)


# --- The variables accept what the function accepts


def test_outputs_variable_defaults_to_the_code_s_default_and_offers_its_choices(tf):
    variable = tf.variables["outputs"]
    assert parse_outputs(",".join(variable["default"])) == DEFAULT_OUTPUT_FORMATS
    (validation,) = variable["validation"]
    choices = next(values for values in _condition_lists(validation["condition"]) if "npy" in values)
    assert tuple(choices) == OUTPUT_FORMATS
    # AND the function is told them: OUTPUTS is a setting the code reads
    assert "var.outputs" in tf.locals["lambda_settings"]["OUTPUTS"]
    assert Settings.from_env({"OUTPUTS": ",".join(variable["default"])}).outputs == DEFAULT_OUTPUT_FORMATS


def test_output_mode_variable_offers_the_code_s_modes_and_default(tf):
    (validation,) = tf.variables["output_mode"]["validation"]
    (choices,) = _condition_lists(validation["condition"])
    assert set(choices) == set(OUTPUT_MODES)
    (default,) = re.findall(r'coalesce\(var\.output_mode, "([^"]+)"\)', tf.locals["cog_suffix"])
    assert default == Settings.from_env({}).output_mode  # null leaves OUTPUT_MODE, hence the COG's name, to the code


def test_input_suffix_validation_knows_every_output(tf):
    # GIVEN the suffix lists in input_suffixes' validations (a validation cannot read the table before 1.9)
    lists = [_condition_lists(v["condition"]) for v in tf.variables["input_suffixes"]["validation"]]
    case_sensitive, lower_case = (ls[0] for ls in lists if ls)
    # THEN the S3 rule knows every output as S3 sees it, and the code's rule what the code refuses
    assert set(case_sensitive) == {*OWN_OUTPUT_NAMES, objects.ERROR_SUFFIX}
    assert set(lower_case) == set(objects.OWN_OUTPUT_SUFFIXES) | set(objects.OWN_EXTENSIONS)


# --- No notification matches an output


def _notification_suffixes(tf) -> dict[str, list[str]]:
    [job] = next(doc for doc in load_all(KNATIVE_DIR / "minio-setup-job.yaml") if doc["kind"] == "Job")["spec"][
        "template"
    ]["spec"]["containers"]
    [service] = next(doc for doc in load_all(KNATIVE_DIR / "service.yaml") if doc["kind"] == "Service")["spec"][
        "template"
    ]["spec"]["containers"]
    return {
        "terraform input_suffixes": tf.default("input_suffixes"),
        "MinIO mc event add --suffix": re.findall(r"mc event add .*? --suffix (\S+)", job["args"][0]),
        "Knative INPUT_SUFFIXES": list(Settings.from_env(literal_env(service["env"])).input_suffixes),
    }


def test_no_notification_suffix_matches_an_output_key(tf):
    sources = _notification_suffixes(tf)
    assert all(sources.values()), sources
    for source, suffixes in sources.items():
        for input_suffix in suffixes:
            # GIVEN an upload the notification takes, WHEN the function writes every output it can for it
            upload = STEM + input_suffix
            assert any(upload.endswith(s) for s in suffixes)
            # THEN no output key ends with any suffix of the same notification (S3/MinIO: case-sensitive)
            matched = sorted(k for k in every_output_key(upload) if any(k.endswith(s) for s in suffixes))
            assert matched == [], f"{source} would notify the function of its own output(s) {matched}"
        # AND whatever the stem: <any stem><own> ends with a filter only if one of the two ends with the other
        own = {*OWN_OUTPUT_NAMES, objects.ERROR_SUFFIX}
        clashes = sorted((f, o) for f in suffixes for o in own if o.endswith(f) or f.endswith(o))
        assert clashes == [], f"{source}: a filter suffix matches an output's key ({clashes})"


def test_the_cog_is_told_apart_by_case_alone():
    # The reason the rule above holds for .tif: the COG's suffix differs only in case from the inputs'.
    cog = STEM + objects.COG_SUFFIXES["mask"]
    assert cog.lower().endswith(".tif") and not cog.endswith(".tif")
