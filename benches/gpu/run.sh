#!/usr/bin/env bash
# The GPU checks of issue 11 (docs/performance.md, "GPU"), run from the repository root on a
# machine with an NVIDIA GPU and its Vulkan driver but no Rust toolchain. Build here first:
#
#   CARGO_TARGET_DIR=target-vk cargo test --release --no-run -p kd-losses -p kd-models -p kd-cli \
#     --features kd-losses/vulkan,kd-models/vulkan,kd-cli/vulkan --test golden --test parity --test cli
#   mkdir -p .gpu/bin; strip -o /tmp/kd target-vk/release/kd; xz -9e -c /tmp/kd > .gpu/bin/kd.xz
#   (likewise target-vk/release/deps/golden-* → .gpu/bin/golden.xz, parity-* → .gpu/bin/parity.xz)
#
# and put the Vulkan loader packages (libvulkan1 & co., .deb) in .gl/. Results go to $OUT.
set -u
OUT=${OUT:-/tmp/kd-gpu}; mkdir -p "$OUT"
for f in .gl/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done; ldconfig
# The test binaries look for their data under the path they were built in.
mkdir -p /work && [ -e /work/main ] || ln -s "$PWD" /work/main
mkdir -p bin && for f in .gpu/bin/*.xz; do b=bin/$(basename "$f" .xz); xz -dc "$f" > "$b"; chmod +x "$b"; done
log() { echo "=== $* ($(date -u +%T))"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
[ -e /usr/share/vulkan/icd.d/nvidia_icd.json ] || [ -e /etc/vulkan/icd.d/nvidia_icd.json ] ||
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json

[ -x bin/golden ] && { log "kd-losses golden on vulkan"; timeout 150 bin/golden vulkan 2>&1 | tail -4; }
[ -x bin/parity ] && { log "kd-models parity on flex and vulkan"; timeout 120 bin/parity 2>&1 | tail -6; }

# Peak GPU memory of a command: nvidia-smi sampled every 100 ms (burn's pools included).
peak() {
  local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "/tmp/mem-$name.csv" &
  local smi=$!
  "$@" 2>&1 | tail -25
  kill $smi; sleep 0.3
  echo "$name peak MiB: $(sort -n "/tmp/mem-$name.csv" | tail -1)" | tee -a "$OUT/summary.txt"
}
KD=bin/kd
for dt in f32 f16; do
  log "arithmetic kd on vulkan, $dt"
  peak "tiny-$dt" timeout 60 $KD distill --config crates/kd-cli/configs/kd.toml --device vulkan --dtype $dt \
    --steps 40 --set train.eval_every=0 --set train.eval_rouge_prompts=16 --set train.log_every=10 --out "/tmp/tiny-$dt"
done
# Qwen2-1.5B-shaped teacher → Qwen2-0.5B-shaped student, batch 4 × 1024 (benches/gpu/qwen_step.toml).
for v in "chunked-f16 --dtype f16 --set train.chunked_head_rows=1024" \
         "chunked-f32 --set train.chunked_head_rows=1024" \
         "dense-f16 --dtype f16" \
         "chunked-bf16 --dtype bf16 --set train.chunked_head_rows=1024"; do
  set -- $v; name=$1; shift
  log "qwen step $name"
  peak "qwen-$name" timeout 150 $KD distill --config benches/gpu/qwen_step.toml "$@" --out "/tmp/q-$name"
  cp "/tmp/q-$name/metrics.jsonl" "$OUT/metrics-$name.jsonl" 2>/dev/null
done
log done
