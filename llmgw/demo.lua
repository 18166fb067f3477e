-- llmgw demo configuration: the real llama-server with the small gemma-3 270M model.
--
-- Paths come from the environment so this file works wherever the two were installed:
--   LLMGW_LLAMA_SERVER   path of the llama-server executable
--   LLMGW_DEMO_MODEL     path of the gemma-3-270m .gguf file
--   LLMGW_LLAMA_LIB      optional: directory of llama-server's shared libraries
-- `python -m llmgw --demo` sets all three (llmgw/demo.py); the gateway answers on
-- http://127.0.0.1:7777/v1.

local function required_env(name, what)
  local value = os.getenv(name)
  if value == nil or value == "" then
    error(name .. " is not set: export it with the path of " .. what, 2)
  end
  return value
end

local llama_server = required_env("LLMGW_LLAMA_SERVER", "the llama-server executable")
local model_file = required_env("LLMGW_DEMO_MODEL", "the gemma-3-270m .gguf model file")
local lib_dir = os.getenv("LLMGW_LLAMA_LIB")
local engine_env = {}
if lib_dir ~= nil and lib_dir ~= "" then
  engine_env.LD_LIBRARY_PATH = lib_dir
end

server = {
  listen_v4 = "127.0.0.1:7777",
  listen_v6 = "none",
  max_engines = 2, -- the chat model and the embedding model stay loaded side by side
}

-- The same model at three context sizes: the gateway starts the smallest one that fits
-- each request and switches up (restarting llama-server) only when a prompt needs it.
local variants = {}
for _, context in ipairs({ 2048, 8192, 32768 }) do
  variants[#variants + 1] = {
    binary = llama_server,
    args = { "-m", model_file, "--host", "127.0.0.1", "--port", "7778", "-c", context, "-np", "1", "--no-webui" },
    context = context,
    env = engine_env,
  }
end

models = {
  {
    name = "gemma-3-270m",
    engine = presets.engines.llamacpp,
    connect = "http://127.0.0.1:7778",
    engine_idle_timeout = 300, -- stop llama-server after 5 idle minutes
    variants = variants,
  },
  {
    -- The same small model as an embedding model (llama-server needs --embeddings and a pooling).
    name = "gemma-3-270m-embed",
    engine = presets.engines.llamacpp,
    connect = "http://127.0.0.1:7779",
    endpoints = { "embeddings", "tokenize" },
    engine_idle_timeout = 300,
    variants = {
      {
        binary = llama_server,
        args = { "-m", model_file, "--host", "127.0.0.1", "--port", "7779", "-c", 2048, "-np", "1", "--no-webui",
                 "--embeddings", "--pooling", "mean" },
        context = 2048,
        env = engine_env,
      },
    },
  },
}
