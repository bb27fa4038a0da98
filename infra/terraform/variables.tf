# --- Naming and placement

variable "name" {
  description = "Name of the function and prefix of every resource (queue, repository, role, alarms)."
  type        = string
  default     = "rasterfn"

  # 41 keeps every derived name within its limit (the IAM role "<name>-function": 64); the derived bucket
  # name, which also holds the account and region, is checked where it is built (bucket.tf).
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,39}[a-z0-9]$", var.name))
    error_message = "name must be 2-41 characters: lower-case letters, digits and hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "region" {
  description = "AWS region; null uses AWS_REGION / the profile's region."
  type        = string
  default     = null
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

# --- Image

variable "image_tag" {
  description = "Tag of the image in the ECR repository to run (immutable tags: one per build, e.g. the git SHA)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid Docker tag other than \"latest\" (tags are immutable here)."
  }
}

variable "ecr_keep_images" {
  description = "How many of the newest never-deployed images the ECR lifecycle policy keeps; deployed ones (tag deployed-*) are never counted here."
  type        = number
  default     = 20

  validation {
    condition     = var.ecr_keep_images >= 1
    error_message = "ecr_keep_images must be >= 1."
  }
}

variable "ecr_keep_deployed_images" {
  description = "How many images ever deployed (tag deployed-<tag>, set by `make tf-apply`) stay available for a rollback; only older ones beyond this count expire."
  type        = number
  default     = 1000

  validation {
    condition     = var.ecr_keep_deployed_images >= 10
    error_message = "ecr_keep_deployed_images must be >= 10: fewer would let a routine rollback target expire."
  }
}

# --- Bucket and notifications

variable "bucket_name" {
  description = "Input bucket name; null: <name>-input-<account>-<region> (which must fit S3's 63 characters)."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be 3-63 characters: lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit."
  }
}

variable "input_prefix" {
  description = "Only objects under this key prefix trigger the function (\"\" = the whole bucket)."
  type        = string
  default     = ""

  validation {
    condition     = !startswith(var.input_prefix, "/")
    error_message = "input_prefix is an S3 key prefix: no leading slash."
  }
}

variable "input_suffixes" {
  description = "Object-created events for keys ending with one of these (case-sensitive in S3) reach the queue."
  type        = list(string)
  default     = [".tif", ".tiff"]

  validation {
    condition     = length(var.input_suffixes) > 0 && alltrue([for s in var.input_suffixes : startswith(s, ".")])
    error_message = "input_suffixes must be a non-empty list of suffixes starting with a dot."
  }

  # No notification may match a key the function writes, whatever var.outputs says now (it can change later):
  # S3's filter is a case-sensitive "ends with", so a suffix matches <stem><own> when it ends <own> (".TIF" ends
  # ".mask.TIF") or <own> ends with it (".x.npy": the output of "a.x.tif"). The list is handler/objects.py's
  # names, as written (tests/infra/test_output_suffixes.py checks that); a validation cannot read locals
  # before Terraform 1.9.
  validation {
    condition = alltrue([
      for s in var.input_suffixes : !anytrue([
        for own in [".npy", ".error.json", ".mask.TIF", ".score.TIF", ".stac.json", ".thumb.png"] :
        endswith(own, s) || endswith(s, own)
      ])
    ])
    error_message = "input_suffixes must not match the function's own outputs (.npy, .error.json, .mask.TIF, .score.TIF, .stac.json, .thumb.png; S3 compares case-sensitively): not .npy, .json, .png or .TIF. Upload .tif/.tiff (or .TIFF)."
  }

  # The function's own check of INPUT_SUFFIXES (handler/settings.py), which compares lower-case: without it,
  # ".JSON" would pass the rule above and deploy a function that refuses to start.
  validation {
    condition = alltrue([
      for s in var.input_suffixes :
      !contains([".npy", ".json", ".png", ".error.json", ".mask.tif", ".score.tif", ".stac.json", ".thumb.png"], lower(s))
    ])
    error_message = "input_suffixes must not be an output's suffix or extension in any case (.npy, .json, .png, .error.json, .mask.tif, .score.tif, .stac.json, .thumb.png): the function refuses them."
  }
}

variable "output_bucket_name" {
  description = "Existing bucket for the outputs (see outputs); null writes them beside the inputs."
  type        = string
  default     = null
}

variable "output_prefix" {
  description = "Key prefix prepended to every output key (OUTPUT_PREFIX); \"\" writes beside the input."
  type        = string
  default     = ""
}

variable "noncurrent_version_expiration_days" {
  description = "Days before replaced or deleted object versions are removed for good."
  type        = number
  default     = 30
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete a non-empty bucket (and its uploads). Keep false outside sandboxes."
  type        = bool
  default     = false
}

variable "access_log_bucket" {
  description = "Existing bucket for S3 server access logs of the input bucket; null: no access logs."
  type        = string
  default     = null
}

# --- Function

variable "memory_mb" {
  description = "Lambda memory in MB (CPU scales with it: 3008 MB is about 2 vCPUs, 10240 MB is 6)."
  type        = number
  default     = 3008

  validation {
    condition     = var.memory_mb >= 1024 && var.memory_mb <= 10240
    error_message = "memory_mb must be between 1024 (torch and a tile need it) and 10240."
  }
}

variable "function_timeout_seconds" {
  description = "Lambda timeout in seconds; the queue's visibility timeout is derived from it."
  type        = number
  default     = 300

  validation {
    condition     = var.function_timeout_seconds >= 60 && var.function_timeout_seconds <= 900
    error_message = "function_timeout_seconds must be between 60 and 900."
  }
}

variable "ephemeral_storage_mb" {
  description = "Size of /tmp in MB: holds the downloaded raster and the .npy before upload."
  type        = number
  default     = 4096

  validation {
    condition     = var.ephemeral_storage_mb >= 512 && var.ephemeral_storage_mb <= 10240
    error_message = "ephemeral_storage_mb must be between 512 and 10240."
  }
}

variable "reserved_concurrency" {
  description = "Concurrent executions reserved for (and capping) the function; null: unreserved (the default: AWS refuses a reservation that leaves the account under 100 unreserved, as on new accounts)."
  type        = number
  default     = null

  validation {
    condition     = var.reserved_concurrency == null || try(var.reserved_concurrency >= 1, false)
    error_message = "reserved_concurrency must be null (unreserved) or >= 1; to stop the function, disable its event source mapping instead of reserving 0."
  }
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention of the function's log group."
  type        = number
  default     = 365
}

variable "log_level" {
  description = "Log level of the function's powertools Logger (POWERTOOLS_LOG_LEVEL)."
  type        = string
  default     = "INFO"
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the function's own metrics (POWERTOOLS_METRICS_NAMESPACE)."
  type        = string
  default     = "rasterfn"
}

# --- Settings passed to the code (handler/settings.py); null keeps the code's default.

variable "precision" {
  description = "PRECISION: auto (default: bf16 where the CPU has it and the card verified it, else fp32), fp32, bf16 or int8."
  type        = string
  default     = null
}

variable "engine" {
  description = "ENGINE: auto (openvino when installed and exported), torch (needs the image's torch target) or openvino."
  type        = string
  default     = null
}

variable "output_mode" {
  description = "OUTPUT_MODE: mask, mask-uint8 or score (the COG is <stem>.score.TIF with score, else <stem>.mask.TIF)."
  type        = string
  default     = null

  # The function's role may write the COG under the one name this mode gives it (iam.tf).
  validation {
    condition     = contains(["mask", "mask-uint8", "score"], lower(coalesce(var.output_mode, "mask")))
    error_message = "output_mode must be null (the code's default, mask), mask, mask-uint8 or score."
  }
}

variable "outputs" {
  description = "OUTPUTS: what is written beside each input: npy (<stem>.npy), cog (<stem>.mask.TIF, or .score.TIF with output_mode score), stac (<stem>.stac.json and its quicklook <stem>.thumb.png). The function's role may write exactly these (and <stem>.error.json)."
  type        = list(string)
  default     = ["npy"]

  validation {
    condition     = alltrue([for o in var.outputs : contains(["npy", "cog", "stac"], o)]) && anytrue([for o in var.outputs : o != "stac"])
    error_message = "outputs must list some of \"npy\", \"cog\", \"stac\" (lower case); stac describes the other outputs, so list npy or cog with it."
  }
}

variable "max_pixels" {
  description = "MAX_PIXELS: larger rasters are rejected from their header, before any pixel is read."
  type        = number
  default     = null
}

variable "max_input_bytes" {
  description = "MAX_INPUT_BYTES: larger objects are rejected before download (keep below ephemeral_storage_mb)."
  type        = number
  default     = null
}

variable "min_remaining_ms" {
  description = "MIN_REMAINING_MS: records not started with less time left are handed back to the queue."
  type        = number
  default     = null
}

variable "model_card" {
  description = "MODEL_CARD: path inside the image of the model card to run (null = the baked-in demo card)."
  type        = string
  default     = null
}

variable "model_uri" {
  description = "MODEL_URI: s3://bucket/key.pt of weights matching the image's card, fetched at start-up instead of the baked-in file (read access is granted)."
  type        = string
  default     = null

  validation {
    condition     = var.model_uri == null || can(regex("^s3://[^/]+/.+$", var.model_uri))
    error_message = "model_uri must look like s3://bucket/key."
  }
}

variable "extra_kms_key_arns" {
  description = "ARNs of the KMS keys that encrypt output_bucket_name or model_uri's bucket when those are not this configuration's key: the function gets kms:Decrypt and kms:GenerateDataKey on them, through S3 only."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.extra_kms_key_arns : can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", arn))])
    error_message = "extra_kms_key_arns must hold KMS key ARNs (arn:aws:kms:REGION:ACCOUNT:key/ID); aliases are not allowed in IAM policies."
  }
}

# --- Queue and event source mapping

variable "batch_size" {
  description = "SQS messages per invocation. 1 suits minute-long rasters; more only amortises start-up for small ones."
  type        = number
  default     = 1
}

variable "maximum_batching_window_seconds" {
  description = "How long the event source mapping waits to fill a batch (0 = invoke as soon as a message arrives)."
  type        = number
  default     = 0
}

variable "maximum_concurrency" {
  description = "Most concurrent invocations the SQS event source starts (2-1000; keep <= reserved_concurrency when that is set)."
  type        = number
  default     = 10

  validation {
    condition     = var.maximum_concurrency >= 2 && var.maximum_concurrency <= 1000
    error_message = "maximum_concurrency must be between 2 and 1000 (an SQS event source limit)."
  }
}

variable "max_receive_count" {
  description = "Deliveries of a message before it moves to the dead-letter queue."
  type        = number
  default     = 3
}

variable "message_retention_seconds" {
  description = "How long an unprocessed event waits in the queue (the DLQ keeps messages 14 days)."
  type        = number
  default     = 345600
}

# --- Alarms

variable "alarm_email" {
  description = "Email subscribed to a new SNS topic for the alarms (confirm the subscription mail); null: none."
  type        = string
  default     = null
}

variable "alarm_topic_arn" {
  description = "Existing SNS topic for the alarms; null: none (besides alarm_email's)."
  type        = string
  default     = null
}

variable "queue_age_alarm_seconds" {
  description = "Alarm when the oldest queued event is older than this (a backlog the function does not keep up with)."
  type        = number
  default     = 3600
}
