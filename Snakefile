# BBBC021 x DINOv3: DINO fine-tuning of timm DINOv3 backbones, scored per epoch by NSC/NSCB.
# Run: snakemake --cores 2 --configfile config/demo.yaml      (demo, CPU)
#      snakemake --profile slurm                                (cluster, real BBBC021)
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "schemas/config.schema.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/download.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        SUMMARY_REPORT,
    default_target: True
