# BBBC021 x DINOv3: DINO fine-tuning of timm DINOv3 backbones, scored per epoch by NSC/NSCB.
# Run: snakemake --cores 2 --configfile config/demo.yaml      (demo, CPU)
#      snakemake --profile slurm                                (cluster, real BBBC021)
import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")
sys.path.insert(0, workflow.basedir)  # so `workflow_scripts` imports without installation
from workflow_scripts import config_check
from workflow_scripts.config import check_schema
from workflow_scripts.errors import InputError

# Every YAML file of the run, read again with a loader that refuses a key given twice (Snakemake
# keeps the last one silently) and names file and line of a syntax error. `--configfile` files
# were parsed by Snakemake before this runs; config.yaml is parsed by the directive below.
try:
    config_check.config_files(
        [
            "config.yaml",
            *workflow.overwrite_configfiles,
            *config_check.profile_files(workflow.basedir),
        ]
    )
except InputError as err:
    raise WorkflowError(f"config error: {err}") from None


configfile: "config.yaml"


try:
    check_schema(config)  # Snakemake's messages below name no key; this one does
except InputError as err:
    raise WorkflowError(f"config error: {err}") from None
validate(config, "schemas/config.schema.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"


# One check of everything the configuration must meet (workflow_scripts/config_check.py), before
# any job: the meta-device model builds in the main process only (job processes re-parse this).
try:
    config_check.check(
        config,
        models=workflow.is_main_process,
        written_by_workflow=(HANDCRAFTED_PROFILES,),
        cache_environ=os.environ if workflow.workflow_settings.cache is not None else None,
        checkout=workflow.basedir,
    )
except InputError as err:
    raise WorkflowError(f"config error: {err}") from None
if workflow.is_main_process:
    prepare_output_dir()


include: "rules/data.smk"
include: "rules/download.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/baselines.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        SUMMARY_REPORT,
