# saliency-fingerprints: do saliency maps identify the network that made them?
#
#   dataset -> primaries (architecture x seed) -> saliency maps (method x primary, Zarr)
#           -> secondaries (experiment x method x variant) -> cross-evaluation -> tables, figures
#   primaries -> sanity checks (parameter / label randomisation, input shift) -> tables, figures
#   primaries -> backdoored copies -> input-agnostic class maps -> trigger localisation table
#
# `snakemake --cores all` runs config/config.yaml (embedded digits). A preset replaces it:
# `snakemake --cores all --configfile config/cifar10-cpu.yaml`.

import sys

from snakemake.utils import min_version

min_version("9.0")

# The library beside this file, importable by every rules/*.smk (they are only ever included
# from here). Script jobs run in processes of their own: scripts/_bootstrap.py does it there.
if str(workflow.basedir) not in sys.path:
    sys.path.append(str(workflow.basedir))


if not workflow.overwrite_configfiles:
    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/primaries.smk"
include: "rules/saliency.smk"
include: "rules/secondaries.smk"
include: "rules/evaluate.smk"
include: "rules/plots.smk"
include: "rules/paper.smk"
include: "rules/sanity.smk"
include: "rules/diagnostics.smk"
include: "rules/studies.smk"
include: "rules/backdoor.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
