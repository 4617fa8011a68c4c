"""BBBC021 x DINOv3: the science behind the Snakemake workflow, one concern per subpackage.

data/      metadata, validation, illumination + image cache, demo generator, download
train/     backbone, DINO head and loss, schedules, multi-crop, loop, distributed, checkpoint
evaluate/  feature extraction, TVN, aggregation, NSC/NSCB/mAP, summary report
"""
