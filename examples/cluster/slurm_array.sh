#!/bin/bash
# One grid across a SLURM job array: each array task runs one shard into its own run folder; nothing is
# shared between tasks but the grid file. Submit, then merge when every task has finished:
#
#   sbatch --array=0-7 examples/cluster/slurm_array.sh my_grid.yaml runs/my_grid
#   unlearn-audit report runs/my_grid/shard-* --out runs/my_grid/merged
#
# A failed cell is recorded with its error in its shard's ledger; re-submitting the same task resumes
# that shard and retries it. The merged report lists every cell no shard finished.
#SBATCH --job-name=unlearn-audit-grid
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
set -euo pipefail
GRID=${1:?grid YAML}
OUT=${2:?folder for the shard run folders}
COUNT=${SLURM_ARRAY_TASK_COUNT:?submit with sbatch --array=0-N}
INDEX=${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=0-N}
# Every shard trains (or loads) the target and retrained models its runs start from; with an expensive
# target, run `unlearn-audit finetune` once and give `target:`/`retrained:` paths in the grid instead.
unlearn-audit grid --config "$GRID" --shard "$INDEX/$COUNT" --out "$OUT/shard-$INDEX"
