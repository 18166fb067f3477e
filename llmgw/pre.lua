-- llmgw pre-script: run by PyLuaHelper before the user's config file.
-- It defines the helpers config authors may use; the names are the ones of
-- LLM-GW, so configs written for LLM-GW keep working.
-- Only the globals "server" and "models" are read back by llmgw.

-- Known engine names, so configs say presets.engines.llamacpp instead of a bare string.
presets = {
  engines = {
    llamacpp = "llama.cpp",
  },
}

local function is_positive_integer(k)
  return type(k) == "number" and k >= 1 and k == math.floor(k)
end

local function check_table(fname, pos, t)
  if type(t) ~= "table" then
    -- level 3: blame the config line that called the helper, not this file
    error(string.format("%s: argument %d must be a table, got %s", fname, pos, type(t)), 3)
  end
end

-- New array with the ipairs elements of a, then those of b. Neither input is modified.
function concat_arrays(a, b)
  check_table("concat_arrays", 1, a)
  check_table("concat_arrays", 2, b)
  local result = {}
  for _, v in ipairs(a) do
    result[#result + 1] = v
  end
  for _, v in ipairs(b) do
    result[#result + 1] = v
  end
  return result
end

-- Shallow copy of t1 where t2's keys override, except that t2's positive-integer
-- keys (its array part) are appended, in order, after t1's array part.
-- Typical use: a base model or variant table plus a few changes and extra args.
function merge_tables(t1, t2)
  check_table("merge_tables", 1, t1)
  check_table("merge_tables", 2, t2)
  local result = {}
  for k, v in pairs(t1) do
    result[k] = v
  end
  local n = 0
  while t1[n + 1] ~= nil do
    n = n + 1
  end
  local positions = {}
  for k, v in pairs(t2) do
    if is_positive_integer(k) then
      positions[#positions + 1] = k
    else
      result[k] = v
    end
  end
  table.sort(positions)
  for _, k in ipairs(positions) do
    n = n + 1
    result[n] = t2[k]
  end
  return result
end
