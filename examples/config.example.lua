-- llmgw example configuration: shows every key.
--
-- This file is plain Lua, run by llmgw before it starts. Only two globals are read back:
-- `server` and `models`. Anything else (local variables, helper functions) is yours.
-- Available helpers, defined by llmgw before this file runs:
--   presets.engines.llamacpp   the engine name "llama.cpp"
--   concat_arrays(a, b)        new array: the elements of a, then those of b
--   merge_tables(t1, t2)       copy of t1 with t2's keys overriding, t2's array items appended
--   loader.workdir             directory of this config file, with a trailing slash
--   os.getenv("NAME")          environment variables, as in any Lua script
-- Keys llmgw does not know are ignored with a warning, so LLM-GW configs still load.
-- Check a config without starting anything: llmgw --check-config path/to/config.lua

local llama_server = "/opt/llama.cpp/bin/llama-server"
local models_dir = "/srv/models/"

-- Builds the llama-server command line for one model file, port and context size.
-- Numbers may be given as numbers: llmgw turns them into text (4096 -> "4096").
local function llama_args(model_file, port, context, extra)
  local args = {
    "-m", models_dir .. model_file,
    "--host", "127.0.0.1",
    "--port", port,
    "-c", context,
    "-np", 1, -- one slot: the gateway sends one request at a time to an engine
    "--no-webui",
  }
  return concat_arrays(args, extra or {})
end

server = {
  -- Where the gateway listens. A string is one address, a table a list of addresses,
  -- "none" disables the family. At least one address overall.
  listen_v4 = "127.0.0.1:7777", -- IPv4 address (or localhost) and port
  listen_v6 = { "[::1]:7777" }, -- IPv6 addresses go in brackets

  -- Timeouts in seconds. Models and variants may override each one (variant > model > server).
  health_check_timeout = 5, -- one GET /health probe of an engine
  engine_startup_timeout = 120, -- from spawning an engine until it reports healthy
  engine_idle_timeout = 0, -- stop an engine idle for this long; 0 keeps it running
  engine_stop_timeout = 15, -- SIGTERM, then SIGKILL after this grace (busy engines, or graceful_stop = true)
  graceful_stop = false, -- false: an engine with no request in flight is killed at once (slots saved first)
  stream_idle_timeout = 120, -- a stream (or a count) with no byte from the engine for this long fails; 0 = never

  max_body_size = 64 * 1024 * 1024, -- largest accepted request body, in bytes
  queue_timeout = 600, -- longest wait for a variant switch or a queue slot before a 503
  completion_reserve = 1024, -- tokens kept for the answer when a request sets no max_tokens
  shutdown_grace = 5, -- on SIGTERM, in-flight requests get this long to finish

  -- Bearer tokens clients must send ("Authorization: Bearer KEY"). Empty or absent: no auth.
  -- Keep real keys out of the file, for example: api_keys = { os.getenv("LLMGW_API_KEY") },
  api_keys = {},
  -- Keys by name, for a team (README "Keys"): key or key_file (read again on SIGHUP; relative to
  -- this file's directory), and optionally models (allow-list), admin (load/unload, /metrics,
  -- /running, /events, /api/..., the page), requests_per_minute, max_concurrent, tokens_per_day
  -- (per UTC day), priority = "interactive" | "batch". Every key of api_keys is admin, all models.
  -- keys = {
  --   alice   = { key_file = "keys/alice", models = { "qwen3-8b" }, tokens_per_day = 2000000 },
  --   nightly = { key = os.getenv("NIGHTLY_KEY"), priority = "batch", max_concurrent = 2 },
  --   ops     = { key_file = "/etc/llmgw/ops.key", admin = true },
  -- },
  -- batch_overtakes = 4, -- interactive requests that may go ahead of one waiting batch request

  -- Placement: which engines may run at the same time.
  max_engines = 2, -- engines running at once (default 1: one model at a time, as in LLM-GW)
  -- Memory in MiB the engines may use together: one number (the engines' RSS plus their GPU
  -- memory), or named pools: gpuN = NVIDIA device N's memory, ram = the engines' RSS.
  -- Absent: only max_engines counts. A variant that declares no `memory` is measured once it
  -- runs; until then it counts for the estimate from its GGUF file's header (-m), else for its
  -- pools whole.
  memory_budget = { gpu0 = 24000, ram = 48000 },
  -- Where measured figures are kept across restarts (default: $XDG_STATE_HOME/llmgw, else
  -- ~/.local/state/llmgw).
  state_dir = os.getenv("HOME") .. "/.local/state/llmgw",
  -- Keep each model's KV cache across stops: before an engine stops (switch, eviction, idle
  -- unload, reload) its slots are saved here, and the next engine of the model gets them back
  -- before its first request, so a long conversation is not processed again. The gateway adds
  -- --slot-save-path itself. max_mb: disk budget in MiB (default 4096), least recently used
  -- files go first. Off when absent; a model may set its own, or slot_cache = false.
  slot_cache = { dir = os.getenv("HOME") .. "/.cache/llmgw/slots", max_mb = 4096 },
  -- Hosts lending their devices over llama.cpp's RPC backend (README: "Several machines"), each
  -- running `python -m llmgw agent`. A variant lists them in `rpc = { "box2" }` (optionally with
  -- `tensor_split` and `local_devices`); a worker serves one engine at a time. memory: MiB it
  -- lends, a memory pool named after the worker. The RPC protocol has no authentication: keep
  -- workers on a private link.
  -- rpc_workers = {
  --   box2 = { address = "10.8.0.2:50052", agent = "http://10.8.0.2:7790", api_key = "...",
  --            devices = { "CUDA0" }, memory = 24000 },
  -- },

  -- Several machines (README, "Several machines"): other gateways requests may go to. Each
  -- stays the only authority over its own engines; this one routes to where a model is warm.
  -- node_name = "laptop", -- this node's name in X-Llmgw-Served-By and /api/state (default: host name)
  -- peers = {
  --   ["gpu-box"] = {
  --     url = "http://192.168.1.20:7777", -- another llmgw, or any OpenAI-compatible server
  --     api_key = os.getenv("GPU_BOX_KEY"), -- sent to it as Authorization: Bearer; never logged
  --     models = { "qwen3-32b" }, -- optional: only these of its models (default: all it lists)
  --     weight = 2, -- optional: its share of the load among equally good nodes (default 1)
  --   },
  -- },
  -- peer_check_interval = 5, peer_check_timeout = 2, -- GET /health of each peer
  -- peer_trip_after = 3, peer_recover_after = 3, peer_min_dwell = 30, -- each peer's breaker
  -- spill_queue = 2, -- a node with this many waiting for a model is passed over

  -- Requests.
  default_model = "qwen3-8b", -- for requests that name no model (without it they get a 400)
  list_aliases = true, -- /v1/models lists each alias as a model of its own (false: only in "aliases")
  -- What GET /api/version says to Ollama clients (README, "Ollama clients"): dotted numbers only;
  -- GitHub Copilot Chat needs at least 0.6.4.
  ollama_version = "0.12.0",
  cors_origins = { "http://localhost:3000" }, -- browser origins allowed; "*" (the default) allows any
  -- A request whose completion budget (max_tokens...) fits no variant runs on the largest variant,
  -- provided the prompt plus completion_reserve fits, and stops when its context is full (as
  -- llama-server does). true: such a request is refused with a 400 instead.
  strict_context = false,
  -- A streaming request that waits for an engine (start, switch, queue) gets its answer's headers
  -- at once and progress once a second until the engine is ready: "comments" (the default: SSE
  -- comment lines, which clients ignore but which keep connections alive), "reasoning" (text chat
  -- UIs show in their thinking box: reasoning_content, an Anthropic thinking block, Responses
  -- reasoning events; comments on other routes) or "none".
  loading_feedback = "comments",
}

-- A model with two variants: the gateway starts the smallest context that fits the request
-- and switches to the bigger one only when a prompt needs it.
local qwen = {
  name = "qwen3-8b", -- the "model" clients ask for
  engine = presets.engines.llamacpp, -- the only engine for now: "llama.cpp"
  connect = "http://127.0.0.1:7778", -- where the engine answers; variants may override it
  engine_idle_timeout = 600, -- overrides server.engine_idle_timeout for this model
  completion_reserve = 2048, -- overrides server.completion_reserve for this model
  pinned = true, -- placement never stops it to make room (its idle timeout and /unload still do)
  exclusive = false, -- true: runs alone (starting it stops the others once they are idle)
  devices = { "gpu0", "ram" }, -- memory pools it uses (default: every pool of memory_budget)
  aliases = { "gpt-4o-mini" }, -- other names clients may use; answers carry the name they used
  endpoints = { "chat", "completions", "messages", "responses", "tokenize" }, -- routes it serves
  -- (chat, completions, embeddings, responses, messages, infill, rerank, tokenize; default: all)
  set = { temperature = 0.6, chat_template_kwargs = { enable_thinking = false } }, -- forced fields
  strip = { "top_k" }, -- fields removed from every request
  completion_limit = 4096, -- caps max_tokens / max_completion_tokens / max_output_tokens / n_predict
  strict_context = true, -- overrides server.strict_context for this model
  loading_feedback = "reasoning", -- overrides server.loading_feedback for this model
  variants = {
    {
      binary = llama_server, -- executable to launch
      args = llama_args("Qwen3-8B-Q4_K_M.gguf", 7778, 8192, { "-ngl", 99 }),
      context = 8192, -- tokens this variant holds: must match what args ask for
      env = { CUDA_VISIBLE_DEVICES = "0" }, -- added to the engine's environment
      memory = { gpu0 = 7000, ram = 1500 }, -- MiB it needs per pool (a number is split evenly)
    },
    {
      binary = llama_server,
      args = llama_args("Qwen3-8B-Q4_K_M.gguf", 7778, 32768, { "-ngl", 99, "-ctk", "q8_0", "-ctv", "q8_0" }),
      context = 32768,
      engine_startup_timeout = 300, -- a big context takes longer to allocate
      health_check_timeout = 10,
      engine_stop_timeout = 30,
      -- no memory: measured when it runs, and remembered in state_dir
    },
  },
}

-- A model with its own tokenizer: llama-tokenize counts prompt tokens without starting an
-- engine, so the right variant is chosen before anything is loaded.
local gemma_file = models_dir .. "gemma-3-4b-it-Q4_K_M.gguf"
local gemma = {
  name = "gemma-3-4b",
  engine = presets.engines.llamacpp,
  -- Its own slot cache (server.slot_cache otherwise; false: none). gemma-3 has sliding-window
  -- layers: llama-server reuses a restored slot for such models only with --swa-full in args
  -- (it makes the KV cache of those layers full size: more memory), added below.
  slot_cache = { dir = os.getenv("HOME") .. "/.cache/llmgw/gemma-slots", max_mb = 2048 },
  devices = { "ram" }, -- a CPU-only model: it never takes GPU memory
  -- endpoints may also be set per variant, e.g. a variant started with --embeddings that serves
  -- { "embeddings" } while the others serve chat (variants of one model never run together).
  tokenization = {
    binary = "/opt/llama.cpp/bin/llama-tokenize",
    base_args = { "--log-disable", "--stdin", "--ids" }, -- the default, shown for completeness
    extra_args = { "-m", gemma_file }, -- appended to base_args
    extra_tokens_per_message = 8, -- chat template overhead added per message
    extra_tokens = 16, -- added once per request
  },
  variants = {
    {
      binary = llama_server,
      args = { "-m", gemma_file, "--host", "127.0.0.1", "--port", "7779", "-c", "16384", "-np", "1", "--swa-full" },
      context = 16384,
      connect = "http://127.0.0.1:7779", -- set on the variant here instead of on the model
    },
  },
}

models = { qwen, gemma }
