-- Headless Neovim end to end: open a C++ file, ask mot-lsp for "Translate to CUDA (MoT)", apply it, save, and
-- wait for the diagnostics of the created .cu file. Writes a JSON report for tests/test_lsp.py to check.
--
-- Run: nvim --headless --clean -i NONE -l tests/nvim/translate.lua CONFIG.json
-- CONFIG: {cmd = [...], cmd_env = {...}, plugin_dir = "editors/nvim", file = "/abs/main.cpp", line = 1-based,
--          col = 0-based, report = "/abs/report.json", settings = {...the mot section...}, timeout_ms = 60000}
-- The editor setup is the plugin of editors/nvim (require('mot').setup: vim.lsp.config + vim.lsp.enable).

local config = vim.json.decode(table.concat(vim.fn.readfile(_G.arg[1]), '\n'))
local timeout = config.timeout_ms or 60000
local report = { steps = {}, messages = {}, progress = {}, errors = {} }

local function step(name)
  table.insert(report.steps, name)
end

local function finish(code)
  local ok, encoded = pcall(vim.json.encode, report)
  if not ok then
    encoded = vim.json.encode({ errors = { 'could not encode the report: ' .. tostring(encoded) } })
  end
  vim.fn.writefile({ encoded }, config.report)
  vim.cmd((code == 0) and 'qall!' or ('cquit ' .. code))
end

local function fail(message)
  table.insert(report.errors, message)
  finish(1)
end

-- Record what the server tells the user and its progress notifications.
local show_message = vim.lsp.handlers['window/showMessage']
vim.lsp.handlers['window/showMessage'] = function(err, result, ctx, cfg)
  table.insert(report.messages, { type = result.type, message = result.message })
  return show_message(err, result, ctx, cfg)
end
vim.api.nvim_create_autocmd('LspProgress', {
  callback = function(ev)
    local value = ev.data.params.value
    table.insert(report.progress, { kind = value.kind, message = value.message, title = value.title })
  end,
})
local diagnostics_for = {}
local publish = vim.lsp.handlers['textDocument/publishDiagnostics']
vim.lsp.handlers['textDocument/publishDiagnostics'] = function(err, result, ctx, cfg)
  diagnostics_for[vim.uri_to_fname(result.uri)] = #result.diagnostics
  return publish(err, result, ctx, cfg)
end

-- The setup a user writes (editors/README.md): the plugin in editors/nvim on the runtimepath, then setup().
vim.opt.runtimepath:prepend(config.plugin_dir)
require('mot').setup({ cmd = config.cmd, cmd_env = config.cmd_env, settings = config.settings })

vim.cmd.edit(vim.fn.fnameescape(config.file))
local source_buf = vim.api.nvim_get_current_buf()
report.filetype = vim.bo[source_buf].filetype

local client
if not vim.wait(timeout, function()
  client = vim.lsp.get_clients({ bufnr = source_buf, name = 'mot' })[1]
  return client ~= nil and client.initialized
end, 50) then
  return fail('mot-lsp did not attach to ' .. config.file)
end
step('attached')
report.offset_encoding = client.offset_encoding

vim.api.nvim_win_set_cursor(0, { config.line, config.col })

-- A hover on the function: the routing table (waits for the daemon link to be ready).
local hover_text
vim.wait(timeout, function()
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  local responses = vim.lsp.buf_request_sync(source_buf, 'textDocument/hover', params, 5000) or {}
  for _, response in pairs(responses) do
    local result = response.result
    if result and result.contents and result.contents.value then
      hover_text = result.contents.value
    end
  end
  return hover_text ~= nil and hover_text:find('MoT routing', 1, true) ~= nil
    and hover_text:find('unavailable', 1, true) == nil
end, 200)
report.hover = hover_text
step('hover')

-- The code action, applied as a user picking it from the menu would (apply = true skips the menu).
-- The listed titles, then the plugin's translate() (what :MotTranslate runs): the code action, resolved and applied.
local titles = {}
local listed = vim.lsp.buf_request_sync(source_buf, 'textDocument/codeAction', vim.tbl_extend('force',
  vim.lsp.util.make_range_params(0, client.offset_encoding), { context = { diagnostics = {} } }), 5000) or {}
for _, response in pairs(listed) do
  for _, action in ipairs(response.result or {}) do
    table.insert(titles, action.title)
  end
end
require('mot').translate()
step('code_action')

local cu_path = vim.fn.fnamemodify(config.file, ':r') .. '.cu'
local cu_buf
if not vim.wait(timeout, function()
  cu_buf = vim.fn.bufnr(cu_path)
  if cu_buf == -1 or not vim.api.nvim_buf_is_loaded(cu_buf) then
    return false
  end
  local lines = vim.api.nvim_buf_get_lines(cu_buf, 0, -1, false)
  return #lines > 1 or (lines[1] or '') ~= ''
end, 50) then
  report.titles = titles
  return fail('no edit reached ' .. cu_path)
end
report.titles = titles
step('edit_applied')
vim.cmd('silent wall')
step('saved')

if not vim.wait(timeout, function()
  return diagnostics_for[cu_path] ~= nil
end, 50) then
  return fail('no diagnostics were published for ' .. cu_path)
end
-- Let the attach of the .cu buffer (didOpen) and any re-publish settle.
vim.wait(500, function() return false end, 50)
step('diagnostics')

report.cu_attached = #vim.lsp.get_clients({ bufnr = cu_buf, name = 'mot' }) > 0
report.cu_lines = vim.api.nvim_buf_get_lines(cu_buf, 0, -1, false)
report.diagnostics = {}
for _, d in ipairs(vim.diagnostic.get(cu_buf)) do
  table.insert(report.diagnostics, { lnum = d.lnum, col = d.col, end_lnum = d.end_lnum, message = d.message, source = d.source })
end
report.published_count = diagnostics_for[cu_path]

-- :MotStatus asks the server, which shows the daemon's status.
vim.cmd('MotStatus')
vim.wait(10000, function()
  for _, m in ipairs(report.messages) do
    if m.message:find('MoT daemon at', 1, true) then
      return true
    end
  end
  return false
end, 50)
step('status')
finish(0)
