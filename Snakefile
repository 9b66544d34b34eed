# mneme: predict the side effects of fine-tuning or unlearning by sparse model diffing.
# Stages live in rules/<stage>.smk, their scripts in workflow_scripts/<rule>.py and the library
# in workflow_scripts/mneme/. See README.md for how to run it and config/schema.yaml for the keys.
import os
import sys

from snakemake.utils import min_version

min_version("9.19")

sys.path.insert(0, os.path.join(workflow.basedir, "workflow_scripts"))
from mneme.config import validate_config


configfile: "config/config.yaml"


report: "report/workflow.rst"


validate_config(
    config,
    os.path.join(workflow.basedir, "config/schema.yaml"),
    workflow.basedir,
    config_files=workflow.configfiles,
)


include: "rules/common.smk"


wildcard_constraints:
    pair=one_of(list(config["pairs"])),


include: "rules/models.smk"
include: "rules/organism.smk"
include: "rules/corpus.smk"
include: "rules/activations.smk"
include: "rules/crosscoder.smk"
include: "rules/latents.smk"
include: "rules/interpret.smk"
include: "rules/benchmark.smk"
include: "rules/evaluate.smk"
include: "rules/reverse.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
    localrule: True
