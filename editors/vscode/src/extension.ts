// MoT CUDA for VS Code: starts mot-lsp (stdio) for C, C++ and CUDA files through vscode-languageclient.
//
// Everything else is the language server's: the "Translate to CUDA (MoT)" code actions (light bulb / Ctrl+.),
// routing hovers, progress with a Cancel button, diagnostics on the produced kernels. The commands below only add
// the arguments (the active document, the selection) to the server's workspace/executeCommand commands.

import * as vscode from "vscode";
import {
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  TransportKind,
} from "vscode-languageclient/node";

const SECTION = "mot";
let client: LanguageClient | undefined;

// The `mot` settings as the server reads them (initializationOptions; later changes are pushed by the client
// through workspace/didChangeConfiguration because of `synchronize.configurationSection`).
function serverSettings(): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration(SECTION);
  const keys = [
    "endpoint", "autostart", "preset", "checkpoint", "mode", "maxNewTokens", "temperature", "placement", "candidates",
    "verify", "check", "requestTimeout", "ignoreEos",
  ];
  const settings: Record<string, unknown> = {};
  for (const key of keys) {
    const value = config.get(key);
    settings[key] = value === "" ? null : value;
  }
  return settings;
}

function createClient(): LanguageClient {
  const command = vscode.workspace.getConfiguration(SECTION).get<string[]>("server.command", ["mot-lsp"]);
  if (!Array.isArray(command) || command.length === 0) {
    throw new Error("mot.server.command must be a non-empty list, e.g. [\"mot-lsp\"]");
  }
  const serverOptions: ServerOptions = {
    command: command[0],
    args: command.slice(1),
    transport: TransportKind.stdio,
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [
      { scheme: "file", language: "c" },
      { scheme: "file", language: "cpp" },
      { scheme: "file", language: "cuda-cpp" },
      { scheme: "file", language: "cuda" },
    ],
    initializationOptions: { [SECTION]: serverSettings() },
    synchronize: { configurationSection: SECTION },
  };
  return new LanguageClient("mot", "MoT CUDA", serverOptions, clientOptions);
}

async function execute(command: string, ...args: unknown[]): Promise<unknown> {
  if (!client) {
    void vscode.window.showErrorMessage("MoT: the language server is not running.");
    return undefined;
  }
  return client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
}

function activeDocument(): vscode.TextEditor | undefined {
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    void vscode.window.showWarningMessage("MoT: open a C, C++ or CUDA file first.");
  }
  return editor;
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  client = createClient();
  context.subscriptions.push(
    vscode.commands.registerCommand("mot-cuda.translateFunction", async () => {
      const editor = activeDocument();
      if (!editor || !client) {
        return;
      }
      const range = client.code2ProtocolConverter.asRange(editor.selection);
      await execute("mot.translate", { uri: editor.document.uri.toString(), range });
    }),
    vscode.commands.registerCommand("mot-cuda.translateFile", async () => {
      const editor = activeDocument();
      if (editor) {
        await execute("mot.translateFile", editor.document.uri.toString());
      }
    }),
    vscode.commands.registerCommand("mot-cuda.daemonStatus", () => execute("mot.daemonStatus")),
    vscode.commands.registerCommand("mot-cuda.restartDaemon", () => execute("mot.restartDaemon")),
    vscode.commands.registerCommand("mot-cuda.restartServer", async () => {
      if (client) {
        await client.stop();
      }
      client = createClient();
      await client.start();
    }),
  );
  try {
    await client.start();
  } catch (error) {
    void vscode.window.showErrorMessage(
      `MoT: could not start the language server (${String(error)}). Install it (pip install -e .) or set mot.server.command.`,
    );
  }
}

export async function deactivate(): Promise<void> {
  if (client) {
    await client.stop();
  }
}
