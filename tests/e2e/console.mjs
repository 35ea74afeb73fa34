// The keyward operator console in a real browser (Debian's chromium, driven by
// playwright-core). Started by tests/console_e2e.rs, which runs keyward and
// answers "STEP <name>" lines on stdin (it does the proxied requests and checks
// what the upstream received). Environment:
//   KW_UI           http://ADMIN/ui/
//   KW_MANAGE_TOKEN an admin token with every permission
//   KW_READ_TOKEN   an admin token with secrets:read and audit:read
//   KW_V1, KW_V2    the secret values to type in (canaries)
//   KW_OUT          where to write downloads and the recorded responses
//   KW_SHOTS        where to write screenshots (<page>-1280.png, <page>-390.png)
import { chromium } from "playwright-core";
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const UI = env("KW_UI");
const [MANAGE, READ, V1, V2] = ["KW_MANAGE_TOKEN", "KW_READ_TOKEN", "KW_V1", "KW_V2"].map(env);
const OUT = env("KW_OUT");
const SHOTS = env("KW_SHOTS");
const NAME = "OPENAI_API_KEY";

const rl = createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();
/** Asks the Rust side to do something; returns its answer (after "ok "). */
async function step(name) {
  process.stdout.write(`STEP ${name}\n`);
  const { value, done } = await lines.next();
  if (done || !value.startsWith("ok")) throw new Error(`step ${name}: ${value}`);
  return value.slice(3);
}
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const profile = mkdtempSync(join(tmpdir(), "kw-e2e-profile-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  acceptDownloads: true,
  viewport: { width: 1280, height: 900 },
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
context.setDefaultTimeout(15000);

// Every response the page receives, kept for the leak check; and nothing may be
// requested from anywhere but keyward.
const origin = new URL(UI).origin;
const received = [];
const pending = [];
context.on("request", (req) => {
  const u = req.url();
  if (!u.startsWith(origin) && !u.startsWith("data:") && !u.startsWith("about:")) {
    received.push(Buffer.from(`EXTERNAL REQUEST ${u}\n`));
  }
});
context.on("response", (resp) => {
  pending.push(
    (async () => {
      const head = `${resp.status()} ${resp.url()}\n${Object.entries(await resp.allHeaders())
        .map(([k, v]) => `${k}: ${v}`)
        .join("\n")}\n`;
      let body = Buffer.alloc(0);
      try {
        body = await resp.body();
      } catch {
        // Redirects and downloads have no body here; downloads are read below.
      }
      received.push(Buffer.from(head), body, Buffer.from("\n"));
    })()
  );
});

const page = context.pages()[0] ?? (await context.newPage());
const shots = [];
/** Screenshots at 1280 and 390 px; at 390 nothing may scroll sideways. */
async function shot(name) {
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: width === 390 ? 844 : 900 });
    const overflow = await page.evaluate(
      () => document.documentElement.scrollWidth - document.documentElement.clientWidth
    );
    check(overflow <= 0, `${name} scrolls sideways at ${width}px by ${overflow}px`);
    const file = `${name}-${width}.png`;
    await page.screenshot({ path: join(SHOTS, file), fullPage: true });
    shots.push(file);
  }
  await page.setViewportSize({ width: 1280, height: 900 });
}
/** Waits until a navigation (back, reload) has finished. */
async function settle() {
  await page.waitForLoadState("load").catch(() => {});
  await page.waitForTimeout(200);
  await page.waitForLoadState("load").catch(() => {});
}
const heading = (text) => page.getByRole("heading", { level: 1, name: text });

async function signIn(token) {
  await page.goto(UI);
  await heading("Sign in").waitFor();
  await page.getByLabel("Admin token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await heading("Secrets").waitFor();
}

async function signOut() {
  await page.getByRole("button", { name: "Sign out" }).click();
  await heading("Sign in").waitFor();
  await page.getByText("You are signed out.").waitFor();
}

try {
  // Sign in (the form is the first page), keyboard only.
  await page.goto(UI);
  await heading("Sign in").waitFor();
  await shot("signin");
  await page.getByLabel("Admin token").focus();
  await page.keyboard.type(MANAGE);
  await page.keyboard.press("Enter");
  await heading("Secrets").waitFor();

  // New secret, then its hint in the list.
  await page.getByRole("link", { name: "New secret" }).click();
  await heading("New secret").waitFor();
  await page.getByLabel("Name").fill(NAME);
  await page.getByLabel("Scope").fill("platform");
  await page.getByLabel("Value").fill(V1);
  check((await page.getByLabel("Value").getAttribute("type")) === "password", "value is a password field");
  check((await page.getByLabel("Value").getAttribute("autocomplete")) === "off", "autocomplete off");
  await page.getByLabel("Description").fill("Production OpenAI key");
  await page.getByLabel("Rotate every").fill("90d");
  await shot("secret-new");
  await page.getByRole("button", { name: "Save" }).click();
  await heading("Secrets").waitFor();
  const hint1 = await step("hint");
  await page.getByRole("cell", { name: hint1, exact: true }).waitFor();
  await shot("secrets");
  await step("inject-v1");

  // Bad input stays next to its field.
  await page.getByRole("link", { name: "New secret" }).click();
  await page.getByLabel("Name").fill("not a name");
  await page.getByLabel("Scope").fill("platform");
  await page.getByLabel("Value").fill(V1);
  await page.getByRole("button", { name: "Save" }).click();
  await page.locator("#f-name-err").waitFor();
  check((await page.getByLabel("Value").inputValue()) === "", "a refused form does not echo the value");
  await shot("secret-new-error");

  // Rotate through Edit: the name is read-only.
  await page.goto(new URL("secrets", UI).href);
  await page.getByRole("link", { name: `Edit ${NAME} in platform` }).click();
  await heading(`Edit ${NAME}`).waitFor();
  check(await page.getByLabel("Name").evaluate((e) => e.readOnly), "name is read-only");
  await page.getByLabel("Value").fill(V2);
  await shot("secret-edit");
  await page.getByRole("button", { name: "Save" }).click();
  await heading("Secrets").waitFor();
  await step("inject-v2");

  // Edit the description alone: no value, same version, same value injected.
  await page.getByRole("link", { name: `Edit ${NAME} in platform` }).click();
  await heading(`Edit ${NAME}`).waitFor();
  await page.getByLabel("Description").fill("Production key, described in the console");
  await page.getByRole("button", { name: "Save" }).click();
  await heading("Secrets").waitFor();
  await page.getByRole("cell", { name: "Production key, described in the console" }).waitFor();
  await step("inject-v2");

  // Clone to another scope.
  await page.getByRole("link", { name: `Clone ${NAME} in platform` }).click();
  await page.getByLabel("Target scope").fill("owner:acme");
  await shot("secret-clone");
  await page.getByRole("button", { name: "Clone" }).click();
  await page.getByText(`Cloned ${NAME} to owner:acme.`).waitFor();
  await page.getByRole("cell", { name: "owner:acme", exact: true }).waitFor();

  // Delete the clone, confirmed by typing the name.
  await page.getByRole("link", { name: `Delete ${NAME} in owner:acme` }).click();
  await page.getByLabel("Type the name to confirm").fill(NAME);
  await shot("secret-delete");
  await page.getByRole("button", { name: "Delete" }).click();
  await page.getByText(`Deleted ${NAME} from owner:acme.`).waitFor();
  check((await page.getByRole("cell", { name: "owner:acme", exact: true }).count()) === 0, "clone deleted");

  // Agents: New agent shows the token once.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Agents" }).click();
  await heading("Agents").waitFor();
  await page.getByRole("link", { name: "New agent" }).click();
  await page.getByLabel("Agent id").fill("bot-e2e");
  await page.getByLabel("Chain").selectOption("triage");
  await page.getByRole("button", { name: "Create" }).click();
  await heading("Agent created").waitFor();
  const agentToken = await page.getByLabel("Agent token").inputValue();
  check(agentToken.length >= 32, "agent token shown");
  await shot("agent-created");
  await step(`agent ${agentToken}`);
  // Back and reload do not bring it back.
  await page.getByRole("link", { name: "Back to agents" }).click();
  await heading("Agents").waitFor();
  await shot("agents");
  try {
    await page.goBack();
  } catch {
    // A no-store POST result is not restored: chromium shows its own error page.
  }
  await settle();
  check(!(await page.content()).includes(agentToken), "token not shown again after back");
  await page.goto(new URL("agents", UI).href);
  check(!(await page.content()).includes(agentToken), "token not on the agents page");

  // Sessions: New session shows the token once.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Sessions" }).click();
  await heading("Sessions").waitFor();
  await page.getByLabel("Agent", { exact: true }).fill("bot-e2e");
  await page.getByLabel("Run id").fill("e2e-run-1");
  await page.getByLabel("TTL").fill("10m");
  await shot("sessions");
  await page.getByRole("button", { name: "New session" }).click();
  await heading("Session created").waitFor();
  const sessionToken = await page.getByLabel("Session token").inputValue();
  await shot("session-created");
  await step(`session ${sessionToken}`);
  // A reload re-sends the form: refused, no second token, this one not shown again.
  try {
    await page.reload();
  } catch {
    // chromium may refuse to re-send a no-store POST on its own.
  }
  await settle();
  check(!(await page.content()).includes(sessionToken), "session token shown again after reload");

  // Remove the agent, confirmed by typing its id.
  await page.goto(new URL("agents", UI).href);
  await heading("Agents").waitFor();
  await page.getByRole("link", { name: "Remove bot-e2e" }).click();
  await heading("Remove bot-e2e").waitFor();
  await page.getByLabel("Type the agent id to confirm").fill("bot-e2");
  await page.getByRole("button", { name: "Remove" }).click();
  await page.getByText("Type bot-e2e exactly to remove it.").waitFor();
  await page.getByLabel("Type the agent id to confirm").fill("bot-e2e");
  await shot("agent-remove");
  await page.getByRole("button", { name: "Remove" }).click();
  await page.getByText("Removed agent bot-e2e.").waitFor();
  await step("agent-removed");

  // Access log: the injections, filtered; the exports.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Access log" }).click();
  await heading("Access log").waitFor();
  await page.getByLabel("Secret").fill(NAME);
  await page.getByLabel("Outcome").selectOption("allowed");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.getByRole("cell", { name: "inject", exact: true }).first().waitFor();
  await shot("access-log");
  for (const [label, file] of [["Export JSONL", "export.jsonl"], ["Export CEF", "export.cef"]]) {
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("link", { name: label }).click(),
    ]);
    await download.saveAs(join(OUT, file));
    received.push(readFileSync(join(OUT, file)));
  }

  // Status.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Status" }).click();
  await heading("Status").waitFor();
  await page.getByText("Readiness checks").waitFor();
  await shot("status");

  await signOut();
  await page.goto(new URL("secrets", UI).href);
  await heading("Sign in").waitFor();

  // A read-only token sees no manage controls.
  await signIn(READ);
  await page.getByRole("cell", { name: NAME, exact: true }).waitFor();
  for (const name of ["New secret", `Edit ${NAME} in platform`, `Delete ${NAME} in platform`, `Clone ${NAME} in platform`]) {
    check((await page.getByRole("link", { name }).count()) === 0, `read-only sees ${name}`);
  }
  const nav = page.getByRole("navigation", { name: "Main" });
  check((await nav.getByRole("link", { name: "Agents" }).count()) === 0, "read-only sees Agents");
  await shot("secrets-read-only");
  await signOut();

  await Promise.all(pending);
  const all = Buffer.concat(received);
  writeFileSync(join(OUT, "responses.bin"), all);
  for (const [what, v] of [["V1", V1], ["V2", V2]]) {
    check(!all.includes(Buffer.from(v)), `a response carried ${what}`);
  }
  check(!all.includes(Buffer.from("EXTERNAL REQUEST")), "the page asked for something outside keyward");
  process.stdout.write(`DONE ${shots.length} screenshots\n`);
} catch (e) {
  await page.screenshot({ path: join(OUT, "failure.png"), fullPage: true }).catch(() => {});
  process.stdout.write(`FAIL ${e.stack ?? e}\n`);
  process.exitCode = 1;
} finally {
  await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  // Let the process end (the open stdin would keep it alive).
  rl.close();
  process.stdin.destroy();
}
