#!/usr/bin/env bash
# Tag the image `make tf-apply` is about to deploy as deployed-<tag>, so the ECR lifecycle policy
# (infra/terraform/ecr.tf) keeps it as a rollback target instead of counting it with never-deployed builds.
# Usage: scripts/ecr_mark_deployed.sh REPOSITORY_URL REGION TAG [PREFIX]
# Fails, before Terraform changes anything, when TAG is not in the repository (not pushed, or expired).
# Idempotent: a tag deployed before (a re-apply, a rollback) is already marked.
set -euo pipefail

repo_url=$1 region=$2 tag=$3 prefix=${4:-deployed-}
repository=${repo_url#*/}

image() {  # one field of the image's description; "None" when the tag is not in the repository
    aws ecr batch-get-image --region "$region" --repository-name "$repository" --image-ids "imageTag=$tag" \
        --query "images[0].$1" --output text
}
manifest=$(image imageManifest)
media_type=$(image imageManifestMediaType)
if [[ -z "${manifest:-}" || "$manifest" == "None" ]]; then
    echo "tf-apply: no image $repo_url:$tag (push it first: make push-image VERSION=$tag)" >&2
    exit 1
fi

if out=$(aws ecr put-image --region "$region" --repository-name "$repository" --image-tag "$prefix$tag" \
    --image-manifest "$manifest" --image-manifest-media-type "$media_type" 2>&1); then
    echo "tf-apply: $repo_url:$tag is also $prefix$tag (kept by the ECR lifecycle policy)"
elif [[ "$out" == *ImageAlreadyExistsException* ]]; then
    echo "tf-apply: $repo_url:$tag was deployed before ($prefix$tag exists)"
else
    echo "$out" >&2
    exit 1
fi
