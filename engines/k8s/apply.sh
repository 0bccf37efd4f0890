#!/usr/bin/env bash
# Run a deployed pipeline on Kubernetes: render its next step as Jobs, apply
# them in order, wait for each, and render again until nothing is left; then
# keep the run's record and report in the store, as a local run does (a
# failed run's too).
#   engines/k8s/apply.sh NAME[@VERSION] s3://bucket/pipelines REGISTRY/wasmpipe:VERSION [SECRET]
# SECRET names a Secret holding the store's credentials (AWS_ACCESS_KEY_ID, ...).
# WASMPIPE_STORE: where outputs go (default ROOT/data); WASMPIPE_RUN_ID: the
# run's id (default k8s-TIME-RANDOM; the same id resumes a run).
set -euo pipefail
pipeline=$1 root=$2 image=$3 secret=${4:-}
store=${WASMPIPE_STORE:-${root%/}/data}
run_id=${WASMPIPE_RUN_ID:-k8s-$(date -u +%Y%m%dT%H%M%SZ)-$RANDOM}
jobs=$(mktemp -d)
plan=$(wasmpipe plan "$pipeline" --from "$root" --publish "$store")
# Until the last stage commits, a stop is a failure; the record says which
# stage failed and why (a task's own error, kept in the store by its pod).
failure="apply.sh stopped before the pipeline was done"
finish() {
    rm -rf "$jobs"
    if ! wasmpipe record --plan "$plan" --store "$store" --collect "$run_id" --engine k8s \
        ${failure:+--error "$failure"} >&2; then
        echo "the record of run $run_id was not kept" >&2
        exit 1
    fi
}
trap finish EXIT
echo "run $run_id of $pipeline" >&2
while true; do
    files=$(wasmpipe render k8s "$pipeline" --from "$root" --store "$store" --image "$image" \
        --run-id "$run_id" ${secret:+--secret "$secret"} --out "$jobs")
    [ -n "$files" ] || break
    for job in $files; do
        name=$(basename "$job" .json | cut -d- -f2-)
        # A Job of this run applied before (the run resumed): one that
        # completed is not run again, one that failed is replaced.
        before=$(kubectl get "job/$name" -o jsonpath='{.status.conditions[?(@.status=="True")].type}' 2>/dev/null || true)
        case " $before " in
            *" Complete "*) continue ;;
            *" Failed "*) kubectl delete "job/$name" --wait=true ;;
        esac
        kubectl apply -f "$job"
        # Until the Job completes, or fails (an index failed for good).
        while true; do
            state=$(kubectl get "job/$name" -o jsonpath='{.status.conditions[?(@.status=="True")].type}')
            case " $state " in
                *" Complete "*) break ;;
                *" Failed "*)
                    failure="Kubernetes Job $name failed (kubectl describe job/$name)"
                    kubectl describe "job/$name" >&2
                    exit 1
                    ;;
            esac
            sleep "${WASMPIPE_K8S_POLL:-5}"
        done
    done
done
failure=""
echo "pipeline $pipeline: every stage committed (run $run_id)" >&2
