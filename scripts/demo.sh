#!/usr/bin/env bash
# The README's demo: the E-LTH workflow on the embedded digits data set, through ticket files.
# It grows with elth: today it makes a random ticket and stretches and squeezes it.
set -euo pipefail
OUT=${1:-demo-out}
mkdir -p "$OUT"
echo "== elth demo: tickets in $OUT =="
elth archs
elth find --method random --arch resnet20-w4 --dataset digits --sparsity 0.8926 --seed 0 \
    -o "$OUT/r20.safetensors" --force
# Stretch through a pipe: the ticket travels on stdout/stdin.
elth find --method random --arch resnet20-w4 --dataset digits --sparsity 0.8926 --seed 0 -o - \
    | elth stretch - --target resnet32 -o "$OUT/r32-append.safetensors" --force
elth stretch "$OUT/r20.safetensors" --target resnet32 --strategy interpolate -o "$OUT/r32-interpolate.safetensors" --force
elth squeeze "$OUT/r32-append.safetensors" --target resnet20 -o "$OUT/r20-back.safetensors" --force
elth info "$OUT/r32-append.safetensors"
