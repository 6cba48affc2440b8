#!/usr/bin/env bash
# Pin infra/aws/cluster.yaml's ImageId to the current build of AWS's "Deep Learning Base
# OSS Nvidia Driver GPU AMI (Ubuntu 22.04)" (x86_64) in the config's region, after checking
# that its NVIDIA driver branch runs the image's CUDA 13 (580 or newer). Needs the AWS CLI
# with credentials that may read SSM public parameters and describe images.
#
#   infra/aws/pin-ami.sh [infra/aws/cluster.yaml]
set -euo pipefail

CONFIG="${1:-$(dirname "${BASH_SOURCE[0]}")/cluster.yaml}"
MIN_DRIVER=580
PARAMETER=/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id

command -v aws >/dev/null || { echo "the AWS CLI is not installed (https://aws.amazon.com/cli/)" >&2; exit 1; }
region="$(sed -nE 's/^  region: *([a-z0-9-]+).*/\1/p' "$CONFIG" | head -n 1)"
[[ -n "$region" ]] || { echo "no provider region in $CONFIG" >&2; exit 1; }

ami="$(aws ssm get-parameter --region "$region" --name "$PARAMETER" --query Parameter.Value --output text)"
name="$(aws ec2 describe-images --region "$region" --image-ids "$ami" --query 'Images[0].Name' --output text)"
description="$(aws ec2 describe-images --region "$region" --image-ids "$ami" --query 'Images[0].Description' --output text)"
driver="$(grep -oiE 'driver[^0-9]*[0-9]{3}(\.[0-9]+)+' <<<"$description" | grep -oE '[0-9]{3}(\.[0-9]+)+' | head -n 1 || true)"
if [[ -z "$driver" ]]; then
    echo "could not read the NVIDIA driver version of $ami ($name) from its description:" >&2
    echo "  $description" >&2
    exit 1
fi
if ((${driver%%.*} < MIN_DRIVER)); then
    echo "$ami ($name) has NVIDIA driver $driver; the image's CUDA 13 needs $MIN_DRIVER or newer" >&2
    exit 1
fi
sed -i -E "s|^( +ImageId: )ami-[0-9a-f]+.*$|\1$ami   # $name, $region, NVIDIA driver $driver (pinned $(date -u +%F))|" "$CONFIG"
echo "pinned $ami ($name, NVIDIA driver $driver) in $CONFIG"
