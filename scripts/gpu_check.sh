#!/usr/bin/env bash
# The GPU code paths, checked wherever CUDA exists (the test suite runs on CPU). Two parts:
#   functional: every strategy 2 steps in bf16 and fp16 (late masking with precomputed masks and with the online
#     segmenter), probe heads in bf16, gradient checkpointing, --fast_augment workers, channels-last + torch.compile,
#     evaluation (--eval_only), resume, and with >= 2 GPUs a 2-rank nccl run;
#   acceptance (scripts/bench/gpu_acceptance.py): 20 late-masking steps with no host sync, CPU/device tail parity,
#     compiled late masking (graph breaks, logits, background gradients), a paper-size step (MFU / the projection's
#     0.35, reserved memory / the table's estimate, compiled / eager, channels_last on / off), loader images/s / each
#     model's demand, and 2 ranks preempted with 2 loader workers each. Its figures go to one JSON file.
# One PASS/FAIL line per check; exit code 1 if any check fails. Without CUDA it says so and exits 0.
# Usage: bash scripts/gpu_check.sh            (logs in $WORK/logs, default a temporary folder; kept on failure)
#        GPU_CHECK_ON_CPU=1 bash scripts/gpu_check.sh   every check on CPU (bf16 autocast, toy sizes): tests the script
#        GPU_CHECK_PARTS=functional|acceptance|all      (default all)
#        GPU_CHECK_JSON=PATH                            the acceptance figures (default runs/gpu_check/gpu_check.json)
set -uo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PY="${PYTHON:-${VENV:-$REPO_ROOT/.venv}/bin/python}"

GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null)"
DEVICE=cuda
DTYPES=(bfloat16 float16)
ON_CPU=()
if [[ "${GPU_CHECK_ON_CPU:-0}" == 1 ]]; then
  DEVICE=cpu; DTYPES=(bfloat16); ON_CPU=(--amp_on_cpu); GPUS=1
elif [[ -z "$GPUS" || "$GPUS" == 0 ]]; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check."
  exit 0
fi
WORK="${WORK:-$(mktemp -d -t bgmask-gpu-check.XXXXXX)}"
mkdir -p "$WORK/logs"
if [[ "$DEVICE" == cuda ]]; then
  echo "gpu_check: $GPUS GPU(s): $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))'); work folder $WORK"
else
  echo "gpu_check: on CPU (GPU_CHECK_ON_CPU=1); work folder $WORK"
fi
FAILED=0
START=$SECONDS
PARTS="${GPU_CHECK_PARTS:-all}"
JSON="${GPU_CHECK_JSON:-$REPO_ROOT/runs/gpu_check/gpu_check.json}"
case "$PARTS" in
  all|functional|acceptance) ;;
  *) echo "gpu_check: GPU_CHECK_PARTS must be functional, acceptance or all, got '$PARTS'" >&2; exit 2 ;;
esac

check() {  # NAME COMMAND...: run it, print PASS/FAIL with its time, keep its log
  local name="$1" start=$SECONDS; shift
  if timeout 600 "$@" > "$WORK/logs/$name.log" 2>&1; then
    printf 'PASS  %-34s %4d s\n' "$name" $((SECONDS - start))
  else
    printf 'FAIL  %-34s %4d s   (log: %s)\n' "$name" $((SECONDS - start)) "$WORK/logs/$name.log"
    tail -n 5 "$WORK/logs/$name.log" | sed 's/^/        /'
    FAILED=1
  fi
}

if [[ "$PARTS" != acceptance ]]; then
# Tiny synthetic benchmark with ground-truth masks and masked folders (early masking, precomputed late masks).
DATA="$WORK/data"
"$PY" scripts/make_synthetic_cub.py --out "$DATA" --num_classes 4 --images_per_class 8 --image_size 64 \
  > "$WORK/logs/data.log" 2>&1 || { echo "FAIL  synthetic data (log: $WORK/logs/data.log)"; exit 1; }
CUB="$DATA/CUB_200_2011"
"$PY" -c "from bgmask.data.masks import write_gt_masked_folders; write_gt_masked_folders('$CUB', progress=False)" \
  >> "$WORK/logs/data.log" 2>&1 || { echo "FAIL  masked folders (log: $WORK/logs/data.log)"; exit 1; }
# An (untrained) segmenter checkpoint of the tiny config: the online late-masking path runs it on every batch.
SEG_CONFIG=mmsegmentation/configs/segformer_mit-b0_tiny_synthetic-128x128.py
SEG_CKPT="$WORK/segmenter.pth"
"$PY" - "$SEG_CONFIG" "$SEG_CKPT" > "$WORK/logs/segmenter.log" 2>&1 <<'EOF' || echo "(no segmenter: see $WORK/logs/segmenter.log)"
import sys, torch
from mmengine.config import Config
from mmseg.apis import init_model
from cub_seg.runner import disable_pretrained
import cub_seg  # noqa: F401  (registers the dataset)
cfg = Config.fromfile(sys.argv[1])
disable_pretrained(cfg)
torch.save({"state_dict": init_model(cfg, device="cpu").state_dict()}, sys.argv[2])
EOF

COMMON=(--data_path "$CUB" --device "$DEVICE" --num_workers 2 --batch_size 8 --epochs 1 --max_train_batches 2
        --seed 0 --diagnostics auto)
CONVNEXT=(--model_arch convnext_atto --image_size 64)
VIT=(--model_arch vit_small_patch14_dinov2 --image_size 56)
EARLY=("$PY" early_masking_and_baseline/train.py)
LATE=("$PY" late_masking/train.py)
for dtype in "${DTYPES[@]}"; do
  AMP=(--use_amp --amp_dtype "$dtype" "${ON_CPU[@]}")
  check "baseline_convnext_$dtype" "${EARLY[@]}" "${COMMON[@]}" "${CONVNEXT[@]}" "${AMP[@]}" \
    --snapshot_dir "$WORK/runs/baseline_$dtype"
  check "early_vit_$dtype" "${EARLY[@]}" --masking early "${COMMON[@]}" "${VIT[@]}" --patch_tokens_only "${AMP[@]}" \
    --snapshot_dir "$WORK/runs/early_$dtype"
  check "late_precomputed_vit_$dtype" "${LATE[@]}" --mask_source gt "${COMMON[@]}" "${VIT[@]}" --patch_tokens_only \
    "${AMP[@]}" --snapshot_dir "$WORK/runs/late_gt_$dtype"
  check "late_second_last_convnext_$dtype" "${LATE[@]}" --mask_source gt --fm_second_last_block "${COMMON[@]}" \
    "${CONVNEXT[@]}" "${AMP[@]}" --snapshot_dir "$WORK/runs/late_second_last_$dtype"
  check "late_segmenter_convnext_$dtype" "${LATE[@]}" --mask_source segmenter --seg_model_config_path "$SEG_CONFIG" \
    --seg_model_checkpoint_path "$SEG_CKPT" "${COMMON[@]}" "${CONVNEXT[@]}" "${AMP[@]}" \
    --snapshot_dir "$WORK/runs/late_segmenter_$dtype"
done
BF16=(--use_amp --amp_dtype bfloat16 --tf32 "${ON_CPU[@]}")
check probe_heads_vit_bfloat16 "${LATE[@]}" --mask_source gt "${COMMON[@]}" "${VIT[@]}" "${BF16[@]}" --freeze_backbone \
  --probe_heads mean,cls,cls_mean,late:mean --snapshot_dir "$WORK/runs/probes"
check grad_checkpointing_vit "${LATE[@]}" --mask_source gt --fm_second_last_block "${COMMON[@]}" "${VIT[@]}" \
  "${BF16[@]}" --grad_checkpointing --snapshot_dir "$WORK/runs/grad_checkpointing"
check fast_augment_late_convnext "${LATE[@]}" --mask_source gt --fm_second_last_block "${COMMON[@]}" "${CONVNEXT[@]}" \
  "${BF16[@]}" --fast_augment --snapshot_dir "$WORK/runs/fast_augment"
check channels_last_compile_convnext "${EARLY[@]}" "${COMMON[@]}" "${CONVNEXT[@]}" "${BF16[@]}" --channels_last \
  --compile --snapshot_dir "$WORK/runs/compiled"
# Resume: a 2-epoch run stopped after epoch 1 (its epoch_1.pt as last.pt) finishes; then --eval_only scores it.
RESUME=("${EARLY[@]}" "${COMMON[@]}" "${CONVNEXT[@]}" "${BF16[@]}" --freeze_backbone --epochs 2
        --save_every_n_epochs 1 --snapshot_dir "$WORK/runs/resume")
check resume_frozen_bfloat16 bash -c "$(printf '%q ' "${RESUME[@]}") && cp $WORK/runs/resume/epoch_1.pt \
$WORK/runs/resume/last.pt && rm $WORK/runs/resume/results.json && $(printf '%q ' "${RESUME[@]}") \
> $WORK/logs/resumed.log 2>&1 && grep -q 'Resumed from' $WORK/logs/resumed.log"
check eval_only "${RESUME[@]}" --eval_only
if [[ "$GPUS" -ge 2 ]]; then
  check nccl_two_ranks "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 \
    early_masking_and_baseline/train.py "${COMMON[@]}" "${VIT[@]}" "${BF16[@]}" --snapshot_dir "$WORK/runs/nccl"
else
  echo "SKIP  nccl_two_ranks                        (one GPU)"
fi
fi

if [[ "$PARTS" != functional ]]; then
  echo "gpu_check: acceptance (figures in $JSON)"
  ACCEPT=("$PY" scripts/bench/gpu_acceptance.py --json "$JSON")
  [[ "$DEVICE" == cpu ]] && ACCEPT+=(--cpu)
  # Its own PASS/FAIL line per check; the whole part has the same 10-minute limit as a functional check.
  timeout 600 "${ACCEPT[@]}" 2> "$WORK/logs/acceptance.log" || { FAILED=1; tail -n 5 "$WORK/logs/acceptance.log"; }
fi

echo "gpu_check: $((SECONDS - START)) s"
if [[ "$FAILED" == 0 ]]; then
  echo "gpu_check: all checks passed"
  [[ -z "${KEEP:-}" ]] && rm -rf "$WORK"
  exit 0
fi
echo "gpu_check: FAILED (logs kept in $WORK/logs)"
exit 1
