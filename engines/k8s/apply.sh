#!/usr/bin/env bash
# Run a deployed pipeline on Kubernetes: render its next step as Jobs, apply
# them in order, wait for each, and render again until nothing is left.
#   engines/k8s/apply.sh NAME[@VERSION] s3://bucket/pipelines REGISTRY/wasmpipe:VERSION [SECRET]
# SECRET names a Secret holding the store's credentials (AWS_ACCESS_KEY_ID, ...).
set -euo pipefail
pipeline=$1 root=$2 image=$3 secret=${4:-}
jobs=$(mktemp -d)
trap 'rm -rf "$jobs"' EXIT
while true; do
    files=$(wasmpipe render k8s "$pipeline" --from "$root" --image "$image" ${secret:+--secret "$secret"} --out "$jobs")
    [ -n "$files" ] || break
    for job in $files; do
        kubectl apply -f "$job"
        name=$(basename "$job" .json | cut -d- -f2-)
        # Until the Job completes, or fails (an index failed for good).
        while true; do
            state=$(kubectl get "job/$name" -o jsonpath='{.status.conditions[?(@.status=="True")].type}')
            case " $state " in
                *" Complete "*) break ;;
                *" Failed "*) kubectl describe "job/$name" >&2; exit 1 ;;
            esac
            sleep 5
        done
    done
done
echo "pipeline $pipeline: every stage committed"
