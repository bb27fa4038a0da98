# rasterfn: `make install`, `make demo`, `make test`, `make bench`. Everything runs from the local .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CHECKOV_VENV ?= .venv-checkov
# PyTorch's CPU wheels: PyPI's Linux torch is a multi-GB CUDA build. Empty it to use only your pip config.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

.DEFAULT_GOAL := help
.PHONY: help install runtime-venv serving-test-venv test-serving demo test lint static pytest bench predict fuzz
.PHONY: train-demo serve image image-torch image-test image-test-if-engine image-size push-image tf-init tf-ecr tf-plan
.PHONY: tf-apply tf-local

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## create .venv and install rasterfn with its test tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --retries 0 --timeout 15 $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) 'torch==2.13.0'
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The function's runtime alone, installed the Dockerfile's way (non-editable, no extras, so no torch): the tests
# check that both entry points import there on the serving engine and that torch and moto are absent.
RUNTIME_VENV ?= .venv-runtime
RUNTIME_SOURCES := $(shell find handler model -name '*.py' -not -path '*/__pycache__/*' 2>/dev/null)

runtime-venv: $(RUNTIME_VENV)/.installed  ## .venv-runtime: rasterfn without extras, as the image installs it

# From scratch whenever the dependencies change: a package left over from an older install (torch) must not hide
# a missing split. A change of the sources alone reinstalls rasterfn itself (no dependencies: seconds, not a minute).
$(RUNTIME_VENV)/.dependencies: pyproject.toml
	rm -rf $(RUNTIME_VENV)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet .
	rm -rf build
	touch $@

$(RUNTIME_VENV)/.installed: $(RUNTIME_VENV)/.dependencies $(RUNTIME_SOURCES)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --no-deps --force-reinstall .
	rm -rf build
	touch $@

# The serving engine's tests (Lambda, Knative, CLI, MODEL_URI, engine choice) in a venv without torch: the
# runtime plus the local tools and pytest, editable so the tests import this checkout.
SERVING_TEST_VENV ?= .venv-serving-test
SERVING_TESTS := tests/model/network/engines tests/handler/test_serving_runtime.py

serving-test-venv: $(SERVING_TEST_VENV)/.installed

$(SERVING_TEST_VENV)/.installed: pyproject.toml
	@test -x $(SERVING_TEST_VENV)/bin/python || $(PYTHON) -m venv $(SERVING_TEST_VENV)
	$(SERVING_TEST_VENV)/bin/python -m pip install --quiet -e '.[local,test]'
	@! $(SERVING_TEST_VENV)/bin/python -c 'import torch' 2>/dev/null || { echo "torch in $(SERVING_TEST_VENV)" >&2; exit 1; }
	touch $@

test-serving: serving-test-venv  ## the serving engine's tests in a venv without torch
	$(SERVING_TEST_VENV)/bin/python -m pytest -q $(SERVING_TESTS)

demo: install  ## the main job: embedded S3 + SQS, upload data/test-1.tif, get its .npy beside it
	$(VENV)/bin/rasterfn demo

test: install runtime-venv lint static pytest test-serving image-test-if-engine  ## lint, static checks, all tests, the image

lint: install  ## ruff (lint + format check)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

pytest: install  ## the test suite alone (pytest's "no tests collected", exit 5, fails the run)
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; fi; exit $$rc

# The header path's fuzz target (tests/model/io/test_header_fuzz.py) for FUZZ_SECONDS; `make test` runs a short smoke.
FUZZ_SECONDS ?= 600

fuzz: install  ## fuzz the pre-pixel path (signature, header, layout, decode limits) for FUZZ_SECONDS (600)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) -m pytest -q -s -p no:logging -W ignore -m long_fuzz tests/model/io/test_header_fuzz.py

bench: install  ## speed and memory ratios, measured side by side in one run
	$(PY) scripts/bench.py
	$(PY) scripts/bench_outputs.py

predict: install  ## segment data/test-1.tif into output.npy
	$(VENV)/bin/rasterfn predict data/test-1.tif -o output.npy

train-demo: install  ## retrain the demo weights (about 10 minutes on 2 CPU cores)
	$(VENV)/bin/rasterfn train-demo

serve: install  ## run the Knative function locally on 127.0.0.1:8080
	$(VENV)/bin/rasterfn serve

# --- Deployment: one image for Lambda and Knative, Terraform for AWS (infra/terraform/README.md).
# Immutable ECR tags: the commit, marked -dirty for uncommitted trees (push-image refuses those).
# Read once (:=), so a commit while `make image-test` runs cannot make its tests look for another tag.
VERSION ?= $(VERSION_NOW)
VERSION_NOW := $(shell git describe --always --dirty --abbrev=12 2>/dev/null || echo dev)
IMAGE ?= rasterfn
# Extra `docker build` flags for docker/build.sh, which picks the builder (buildx, else the engine's BuildKit),
# the base (the official one, else an offline one built from Debian's packages) and where torch comes from.
DOCKER_BUILD_FLAGS ?=
DOCKER ?= docker
IMAGE_MAX_MB ?= 1200
TF_DIR ?= infra/terraform
TF := terraform -chdir=$(TF_DIR)
# A filesystem mirror of the Terraform registry holding hashicorp/aws: `make static` and `make tf-local` use it
# when it exists (offline machines); elsewhere Terraform downloads the provider from the registry.
TF_PLUGIN_MIRROR ?= /opt/tf-plugins
# ECR keeps images tagged with this prefix as rollback targets (infra/terraform: local.deployed_tag_prefix).
ECR_DEPLOYED_PREFIX := deployed-

static: install  ## checkov (own venv .venv-checkov) and terraform fmt/validate on infra/terraform, hadolint
	VENV=$(VENV) CHECKOV_VENV=$(CHECKOV_VENV) PYTHON=$(PYTHON) TF_PLUGIN_MIRROR=$(TF_PLUGIN_MIRROR) scripts/static_checks.sh

image:  ## build the Lambda/Knative image rasterfn:VERSION (git commit), with or without a registry
	TORCH_INDEX_URL=$(TORCH_INDEX_URL) PYTHON=$(PYTHON) docker/build.sh $(IMAGE):$(VERSION) $(DOCKER_BUILD_FLAGS)

image-torch:  ## the torch variant rasterfn:VERSION-torch (ENGINE=torch: exact masks, or a GPU)
	TORCH_INDEX_URL=$(TORCH_INDEX_URL) PYTHON=$(PYTHON) docker/build.sh $(IMAGE):$(VERSION)-torch \
		--build-arg RUNTIME_VENV=torch --build-arg ENGINE=torch $(DOCKER_BUILD_FLAGS)

# Both images run as Lambda and Knative run them, on loopback only (--network host): tests/image.
image-test: install image image-torch  ## build both images, then run them as Lambda and Knative do (tests/image)
	RASTERFN_IMAGE=$(IMAGE):$(VERSION) RASTERFN_TORCH_IMAGE=$(IMAGE):$(VERSION)-torch DOCKER=$(DOCKER) \
		$(PY) -m pytest tests/image

# `make test`'s part: the image tests where an engine answers, else one line saying why they did not run.
image-test-if-engine:
	@if $(DOCKER) info >/dev/null 2>&1; then $(MAKE) --no-print-directory image-test; \
	else echo "image-test: SKIPPED: no Docker engine answers '$(DOCKER) info' (start dockerd; .ci/run does)"; fi

image-size:  ## size of the image in MB; fails above IMAGE_MAX_MB (1200)
	@size=$$(docker image inspect --format '{{.Size}}' $(IMAGE):$(VERSION)) && \
	mb=$$(( size / 1000000 )) && echo "$(IMAGE):$(VERSION) $$mb MB (limit $(IMAGE_MAX_MB) MB)" && \
	[ $$mb -le $(IMAGE_MAX_MB) ]

tf-init:  ## terraform init in infra/terraform
	$(TF) init

tf-ecr:  ## first deployment only: create the ECR repository (and its key) so an image can be pushed
	$(TF) apply -var image_tag=$(VERSION) -target=aws_ecr_repository.this \
		-target=aws_ecr_lifecycle_policy.this -target=aws_ecr_repository_policy.this

tf-plan:  ## terraform plan for image tag VERSION
	$(TF) plan -var image_tag=$(VERSION)

tf-apply:  ## terraform apply for image tag VERSION (push it first); tags it deployed-VERSION so ECR keeps it
	scripts/ecr_mark_deployed.sh "$$($(TF) output -raw ecr_repository_url)" "$$($(TF) output -raw region)" \
		$(VERSION) $(ECR_DEPLOYED_PREFIX)
	$(TF) apply -var image_tag=$(VERSION)

tf-local: install  ## terraform apply infra/terraform onto embedded moto, one .tif through it, terraform destroy
	$(VENV)/bin/rasterfn tf-local $(if $(wildcard $(TF_PLUGIN_MIRROR)),--plugin-mirror $(TF_PLUGIN_MIRROR))

push-image: image  ## build, then push the image to the ECR repository Terraform created
	@case "$(VERSION)" in *-dirty|dev) echo "push-image: commit first; ECR tags are immutable and $(VERSION) names no commit" >&2; exit 1;; esac
	repo=$$($(TF) output -raw ecr_repository_url) && region=$$($(TF) output -raw region) && \
	aws ecr get-login-password --region "$$region" | docker login --username AWS --password-stdin "$${repo%%/*}" && \
	docker tag $(IMAGE):$(VERSION) "$$repo:$(VERSION)" && \
	docker push "$$repo:$(VERSION)"

# --- Knative on minikube (see infra/knative/): a local cluster, Knative Serving + kourier, Knative Eventing (in-memory
# channel, MT channel-based Broker), MinIO whose webhooks reach the function through the Broker.
# Runs on your machine (needs minikube, kubectl, curl, openssl); nothing here runs in CI.
MINIKUBE_PROFILE ?= rasterfn
KUBERNETES_VERSION ?= v1.30.0
KNATIVE_VERSION ?= 1.15.2
KOURIER_VERSION ?= 1.15.1
EVENTING_VERSION ?= 1.15.2
# dev.local: on Knative's list of registries whose tags are not resolved to digests (set explicitly below), so
# the image built into minikube's runtime runs as it is. Any other name needs a registry Knative can reach.
KNATIVE_IMAGE ?= dev.local/rasterfn:0.1.0
KNATIVE_SKIP_TAG_RESOLVING ?= kind.local,ko.local,dev.local
# Magic DNS: with `minikube tunnel` running, http://<service>.default.127.0.0.1.sslip.io reaches kourier.
KNATIVE_DOMAIN ?= 127.0.0.1.sslip.io
KUBECTL ?= kubectl --context $(MINIKUBE_PROFILE)
KNATIVE_RELEASES := https://github.com/knative
SERVING_RELEASE := $(KNATIVE_RELEASES)/serving/releases/download/knative-v$(KNATIVE_VERSION)
EVENTING_RELEASE := $(KNATIVE_RELEASES)/eventing/releases/download/knative-v$(EVENTING_VERSION)
KNATIVE_SECRET ?= rasterfn-minio
.PHONY: minikube knative-install knative-image knative-secrets knative-deploy knative-func-deploy knative-smoke
.PHONY: knative-fanout-smoke

minikube:  ## start the local cluster for Knative (profile rasterfn, 4 CPUs, 8 GB, Calico for NetworkPolicies)
	minikube start -p $(MINIKUBE_PROFILE) --kubernetes-version=$(KUBERNETES_VERSION) --cpus=4 --memory=8g --cni=calico

knative-install:  ## install pinned Knative Serving + kourier and Eventing (in-memory channel, MT Broker)
	$(KUBECTL) apply -f $(SERVING_RELEASE)/serving-crds.yaml
	$(KUBECTL) wait --for=condition=Established --timeout=120s crd/services.serving.knative.dev
	$(KUBECTL) apply -f $(SERVING_RELEASE)/serving-core.yaml
	$(KUBECTL) apply -f $(KNATIVE_RELEASES)/net-kourier/releases/download/knative-v$(KOURIER_VERSION)/kourier.yaml
	$(KUBECTL) patch configmap/config-network -n knative-serving --type merge \
		-p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
	$(KUBECTL) patch configmap/config-domain -n knative-serving --type merge -p '{"data":{"$(KNATIVE_DOMAIN)":""}}'
	$(KUBECTL) patch configmap/config-deployment -n knative-serving --type merge \
		-p '{"data":{"registries-skipping-tag-resolving":"$(KNATIVE_SKIP_TAG_RESOLVING)"}}'
	$(KUBECTL) patch configmap/config-features -n knative-serving --type merge \
		-p '{"data":{"kubernetes.podspec-emptydir":"enabled"}}'
	$(KUBECTL) patch configmap/config-defaults -n knative-serving --type merge \
		-p '{"data":{"revision-timeout-seconds":"600","max-revision-timeout-seconds":"600"}}'
	$(KUBECTL) apply -f $(EVENTING_RELEASE)/eventing-crds.yaml
	$(KUBECTL) wait --for=condition=Established --timeout=120s crd/brokers.eventing.knative.dev
	$(KUBECTL) apply -f $(EVENTING_RELEASE)/eventing-core.yaml
	$(KUBECTL) apply -f $(EVENTING_RELEASE)/in-memory-channel.yaml
	$(KUBECTL) apply -f $(EVENTING_RELEASE)/mt-channel-broker.yaml
	$(KUBECTL) patch configmap/config-features -n knative-eventing --type merge \
		-p '{"data":{"delivery-timeout":"enabled","authentication-oidc":"enabled"}}'
	$(KUBECTL) wait deployment --all -n knative-serving --for=condition=Available --timeout=300s
	$(KUBECTL) wait deployment --all -n kourier-system --for=condition=Available --timeout=300s
	$(KUBECTL) wait deployment --all -n knative-eventing --for=condition=Available --timeout=300s

knative-image:  ## build the image (Dockerfile) straight into minikube's container runtime as KNATIVE_IMAGE
	minikube -p $(MINIKUBE_PROFILE) image build -t $(KNATIVE_IMAGE) .

knative-secrets:  ## create the Secret rasterfn-minio with random MinIO credentials and webhook token (once; kept after)
	@if $(KUBECTL) get secret $(KNATIVE_SECRET) >/dev/null 2>&1; then \
		echo "secret $(KNATIVE_SECRET) exists: kept (delete it and MinIO's volume to start over)"; \
	else \
		$(KUBECTL) create secret generic $(KNATIVE_SECRET) \
			--from-literal=root-user=rasterfn-admin \
			--from-literal=root-password="$$(openssl rand -hex 24)" \
			--from-literal=webhook-token="$$(openssl rand -hex 32)" \
			--from-literal=function-access-key="rasterfn-$$(openssl rand -hex 6)" \
			--from-literal=function-secret-key="$$(openssl rand -hex 24)" && \
		$(KUBECTL) label secret $(KNATIVE_SECRET) app.kubernetes.io/part-of=rasterfn; \
	fi

knative-deploy: knative-secrets  ## MinIO, its bucket setup Job, the Eventing relay, Broker, Triggers, the Service
	$(KUBECTL) apply -f infra/knative/minio.yaml
	$(KUBECTL) delete job/minio-setup --ignore-not-found  # a Job's template cannot change: run it afresh
	$(KUBECTL) apply -f infra/knative/
	$(KUBECTL) wait --for=condition=Available --timeout=300s deployment/minio
	$(KUBECTL) wait --for=condition=Complete --timeout=300s job/minio-setup
	$(KUBECTL) wait --for=condition=Ready --timeout=600s ksvc/rasterfn
	$(KUBECTL) wait --for=condition=Ready --timeout=300s broker/default trigger/rasterfn-uploads sinkbinding/rasterfn-relay \
		trigger/rasterfn-shards sinkbinding/rasterfn-fanout
	$(KUBECTL) rollout status --timeout=300s deployment/rasterfn-relay

knative-func-deploy: knative-secrets  ## the Service alone with the func CLI: no build, no push, the local image
	func deploy --build=false --push=false --image $(KNATIVE_IMAGE)

knative-smoke: install  ## upload data/test-1.tif to MinIO, wait for its .npy (via the Broker); POST /inference
	KUBECTL="$(KUBECTL)" PY="$(PY)" bash infra/knative/smoke.sh

knative-fanout-smoke: install  ## shard a generated 2048 x 2048 scene through the Broker (threshold 0 meanwhile)
	KUBECTL="$(KUBECTL)" PY="$(PY)" bash infra/knative/fanout-smoke.sh
