-- MoT CUDA for Neovim: the built-in LSP client talking to mot-lsp for C, C++ and CUDA buffers.
--
--   require('mot').setup({ settings = { placement = 'belowFunction' } })
--
-- Neovim 0.11+: vim.lsp.config + vim.lsp.enable. Neovim 0.10: vim.lsp.start on FileType.
-- The code actions ("Translate to CUDA (MoT): ..."), hovers (routing), progress ($/progress, shown by
-- vim.lsp.status() or your statusline) and diagnostics come from the server; this file only starts it, passes the
-- settings, and adds a few commands:
--   :MotTranslate         translate the function under the cursor, or the visual selection (:'<,'>MotTranslate)
--   :MotTranslateFile     translate every function of the buffer
--   :MotStatus            show the daemon's status
--   :MotRestartDaemon     stop the daemon at the endpoint and start one with the current settings
--   :MotCancel            cancel the running translations (the same as cancelling their progress)

local M = {}

M.defaults = {
  -- How to start the server: the mot-lsp entry point of the Python environment where mot-cuda is installed.
  cmd = { 'mot-lsp' },
  cmd_env = nil,
  filetypes = { 'c', 'cpp', 'cuda' },
  root_markers = { 'compile_commands.json', '.git' },
  -- The `mot` section (the same keys as VS Code's mot.* settings; nil = the server's default).
  settings = {
    endpoint = nil, -- 'ipc:///path.sock' or 'tcp://127.0.0.1:PORT'; nil: the daemon's default socket
    autostart = true, -- start `mot-daemon serve` when none answers (it stops with the server)
    preset = nil, -- for an autostarted daemon: 'seed', 'pocket', 'tiny', ...
    checkpoint = nil, -- for an autostarted daemon: a best_model/ folder
    mode = 'full', -- 'fast' | 'full'
    maxNewTokens = 512,
    temperature = 0, -- 0: greedy
    placement = 'newFile', -- 'newFile' | 'belowFunction' | 'replaceSelection'
    candidates = 4, -- the greedy candidate, then sampled ones, where they are verified; 1: greedy only
    verify = 'auto', -- 'auto' (the daemon verifies each kernel where it has a C++ compiler) | 'off'
    check = 'auto', -- 'auto' (nvcc if installed, else syntax) | 'syntax' | 'off'
  },
}

M.name = 'mot'
local TITLE = 'Translate to CUDA (MoT)'

-- client:notify() is the 0.11 method form; 0.10 has client.notify(method, params).
local function notify(client, method, params)
  if vim.fn.has('nvim-0.11') == 1 then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

local function clients(bufnr)
  return vim.lsp.get_clients({ name = M.name, bufnr = bufnr })
end

local function exec(command, arguments)
  local client = clients(0)[1] or clients()[1]
  if not client then
    vim.notify('MoT: mot-lsp is not running for this buffer', vim.log.levels.WARN)
    return
  end
  local params = { command = command, arguments = arguments }
  if client.exec_cmd then -- 0.11
    client:exec_cmd(params, { bufnr = vim.api.nvim_get_current_buf() })
  else
    client.request('workspace/executeCommand', params, nil, 0)
  end
end

--- Translate the function under the cursor (or the given range, 1-based lines) with the code action.
function M.translate(range)
  local opts = {
    apply = true,
    context = { only = { 'refactor.rewrite.cuda' } },
    filter = function(action)
      if action.title:find(TITLE, 1, true) == nil then
        return false
      end
      -- With a range, the selection action; at a cursor, the function's.
      return range == nil or action.title:find('selection', 1, true) ~= nil
    end,
  }
  if range then
    opts.range = range
  end
  vim.lsp.buf.code_action(opts)
end

--- Push new settings to the running servers (workspace/didChangeConfiguration), e.g.
---   require('mot').configure({ placement = 'replaceSelection' })
function M.configure(settings)
  M.options.settings = vim.tbl_deep_extend('force', M.options.settings, settings)
  if vim.lsp.config then
    vim.lsp.config(M.name, { settings = { mot = M.options.settings } })
  end
  for _, client in ipairs(clients()) do
    client.settings = vim.tbl_deep_extend('force', client.settings or {}, { mot = M.options.settings })
    notify(client, 'workspace/didChangeConfiguration', { settings = client.settings })
  end
end

function M.cancel()
  for _, client in ipairs(clients()) do
    for token, _ in pairs(M._progress[client.id] or {}) do
      notify(client, 'window/workDoneProgress/cancel', { token = token })
    end
  end
end

M._progress = {}

local function track_progress()
  vim.api.nvim_create_autocmd('LspProgress', {
    group = vim.api.nvim_create_augroup('mot-progress', { clear = true }),
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if not client or client.name ~= M.name then
        return
      end
      local tokens = M._progress[client.id] or {}
      M._progress[client.id] = tokens
      local value = ev.data.params.value
      tokens[ev.data.params.token] = (value.kind ~= 'end') or nil
    end,
  })
end

local function user_commands()
  vim.api.nvim_create_user_command('MotTranslate', function(args)
    if args.range > 0 then
      local last = vim.api.nvim_buf_get_lines(0, args.line2 - 1, args.line2, false)[1] or ''
      M.translate({ start = { args.line1, 0 }, ['end'] = { args.line2, #last } })
    else
      M.translate()
    end
  end, { range = true, desc = 'MoT: translate the function under the cursor (or the range) to CUDA' })
  vim.api.nvim_create_user_command('MotTranslateFile', function()
    exec('mot.translateFile', { vim.uri_from_bufnr(0) })
  end, { desc = 'MoT: translate every function of this file to CUDA' })
  vim.api.nvim_create_user_command('MotStatus', function()
    exec('mot.daemonStatus', {})
  end, { desc = 'MoT: show the daemon status' })
  vim.api.nvim_create_user_command('MotRestartDaemon', function()
    exec('mot.restartDaemon', {})
  end, { desc = 'MoT: restart the daemon' })
  vim.api.nvim_create_user_command('MotCancel', M.cancel, { desc = 'MoT: cancel running translations' })
end

function M.setup(opts)
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  local o = M.options
  local config = {
    cmd = o.cmd,
    cmd_env = o.cmd_env,
    filetypes = o.filetypes,
    root_markers = o.root_markers,
    init_options = { mot = o.settings },
    settings = { mot = o.settings },
  }
  if vim.lsp.config and vim.lsp.enable then -- Neovim 0.11+
    vim.lsp.config(M.name, config)
    vim.lsp.enable(M.name)
  else -- Neovim 0.10
    vim.api.nvim_create_autocmd('FileType', {
      group = vim.api.nvim_create_augroup('mot-lsp', { clear = true }),
      pattern = o.filetypes,
      callback = function(args)
        vim.lsp.start({
          name = M.name,
          cmd = o.cmd,
          cmd_env = o.cmd_env,
          root_dir = vim.fs.root(args.buf, o.root_markers) or vim.fn.getcwd(),
          init_options = config.init_options,
          settings = config.settings,
        }, { bufnr = args.buf })
      end,
    })
  end
  track_progress()
  user_commands()
  return M
end

return M
