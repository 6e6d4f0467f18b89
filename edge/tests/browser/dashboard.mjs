// Drives the dashboard of a running `gitdeploy up` in headless Chromium, as a user would, and
// fails (exit 1, with the step that failed) on the first thing that is not as it should be.
// Started by edge/tests/dashboard.rs, which provides:
//   GITDEPLOY_URL  the dashboard (http://localhost:<port>)
//   API_TOKEN      the token the server requires
//   REPO_URL       a fixture repository served over git on loopback; REPO_DIR its work tree
//   HOOK_URL       a webhook receiver on loopback (answers 204)
//   ARTIFACTS      where screenshots go
//   CHROMIUM       the browser binary
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import assert from "node:assert/strict";

const { GITDEPLOY_URL, API_TOKEN, REPO_URL, REPO_DIR, ARTIFACTS, CHROMIUM, FOLDER_ID, SOURCE_ID, HOOK_URL } = process.env;
for (const [k, v] of Object.entries({ GITDEPLOY_URL, API_TOKEN, REPO_URL, REPO_DIR, ARTIFACTS, CHROMIUM, HOOK_URL })) {
  if (!v) throw new Error(`${k} is not set`);
}
mkdirSync(ARTIFACTS, { recursive: true });
const BUILD_TIMEOUT = 180_000;

let step = "launch";
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update"],
});
const consoleErrors = [];
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  const shot = (name, p = page) => p.screenshot({ path: `${ARTIFACTS}/${name}.png`, fullPage: true });

  step = "sign in";
  await page.goto(`${GITDEPLOY_URL}/`);
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await shot("01-sign-in");
  await page.getByLabel("API token").fill("wrong-token");
  await page.keyboard.press("Enter");
  await page.getByText("That token was refused.").waitFor();
  await page.getByLabel("API token").fill(API_TOKEN);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Deploy a repository" }).waitFor();

  step = "validation before submit";
  const repo = page.getByLabel("Git repository URL");
  await repo.fill("not a url");
  await page.getByRole("button", { name: "Deploy" }).click();
  await page.getByText("That is not a URL.").waitFor();
  assert.equal(await repo.getAttribute("aria-invalid"), "true");
  assert.equal(await page.evaluate(() => document.activeElement.id), "repo", "focus goes to the bad field");
  await shot("02-validation-client");

  step = "validation after submit";
  await repo.fill("ssh://git.example.com/owner/repo.git");
  await page.getByRole("button", { name: "Deploy" }).click();
  await page.locator("#repo-error", { hasText: "not allowed here" }).waitFor();
  await shot("03-validation-server");

  step = "deploy v1 with the keyboard";
  await repo.fill(REPO_URL);
  await page.getByLabel(/^Project/).fill("dash-site");
  await page.getByLabel(/^Project/).press("Enter");
  await page.waitForURL(/#\/deployments\/[a-z0-9]{12}$/);
  const first = page.url().split("/").pop();

  step = "log lines appear while the build runs";
  await page.locator("#log .l").first().waitFor();
  assert.equal(await page.locator("#outcome .banner").count(), 0, "a line is shown before the build ended");
  await page.locator("#log .l.stdout", { hasText: "compiling page 3" }).waitFor({ timeout: BUILD_TIMEOUT });
  await shot("04-building");
  await page.locator("#site-link").waitFor({ timeout: BUILD_TIMEOUT });
  await shot("05-ready");

  step = "log rendering";
  const seqs = await page.locator("#log .l").evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
  assert.deepEqual(seqs, seqs.map((_, i) => i), "every line once, in order");
  assert.ok(await page.locator("#log .l.system").count() > 3, "step headers");
  assert.ok(await page.locator("#log .l.stderr", { hasText: "a warning on stderr" }).count() === 1);
  assert.equal(await page.locator("#log .ansi-32", { hasText: "green text" }).count(), 1, "ANSI colours");
  assert.equal(await page.locator("#log").evaluate((e) => e.textContent.includes("\u001b")), false);
  assert.match(await page.locator("#log .l .ts").first().textContent(), /^\d\d:\d\d\.\d$/);

  step = "open the site";
  const [site] = await Promise.all([context.waitForEvent("page"), page.locator("#site-link").click()]);
  await site.waitForLoadState();
  assert.match(await site.locator("h1").textContent(), /version 1/);
  await shot("06-site", site);
  await site.close();

  step = "deploy v2";
  execFileSync("sh", ["-c", "sed -i 's/version 1/version 2/' build.js && git -c user.email=t@example.com -c user.name=t commit -qam v2"], { cwd: REPO_DIR });
  await page.goto(`${GITDEPLOY_URL}/#/`);
  await page.getByLabel("Git repository URL").fill(REPO_URL);
  await page.getByLabel(/^Project/).fill("dash-site");
  await page.getByRole("button", { name: "Deploy" }).click();
  await page.waitForURL((u) => /#\/deployments\/[a-z0-9]{12}$/.test(u.href) && !u.href.endsWith(first));
  const second = page.url().split("/").pop();
  await page.locator("#site-link").waitFor({ timeout: BUILD_TIMEOUT });

  step = "project page";
  await page.getByRole("link", { name: "dash-site" }).first().click();
  await page.getByRole("heading", { name: "dash-site" }).waitFor();
  await page.locator("#production-id", { hasText: second }).waitFor();
  await shot("07-project");
  const production = await page.locator("#production-url").getAttribute("href");
  // Chromium resolves every *.localhost name to loopback, as the platform's URLs expect.
  const served = async () => {
    const p = await context.newPage();
    try {
      await p.goto(production);
      return await p.content();
    } finally {
      await p.close();
    }
  };
  assert.match(await served(), /version 2/);

  step = "roll back";
  await page.getByRole("button", { name: "Roll back" }).click();
  await page.getByRole("dialog").waitFor();
  await shot("08-confirm-rollback");
  await page.getByRole("dialog").getByRole("button", { name: "Roll back" }).click();
  await page.locator("#production-id", { hasText: first }).waitFor();
  assert.match(await served(), /version 1/);

  step = "promote";
  await page.locator(`button.promote[data-id="${second}"]`).click();
  await page.getByRole("dialog").getByRole("button", { name: "Promote" }).click();
  await page.locator("#production-id", { hasText: second }).waitFor();
  assert.match(await served(), /version 2/);
  await shot("09-promoted");

  step = "traffic";
  // Three visits of the production URL so far; the edge stores its counts every 100 ms here.
  const hour = page.locator("#traffic-hour");
  for (const deadline = Date.now() + 20000; ; ) {
    await page.reload();
    await hour.locator(".requests").waitFor();
    const ok = Number(await hour.locator('[data-class="2xx"]').textContent().then((t) => t.split(" ")[1]));
    if (ok >= 3) break;
    assert.ok(Date.now() < deadline, `the traffic card never showed the visits: ${await hour.textContent()}`);
    await page.waitForTimeout(100);
  }
  assert.ok(Number(await hour.locator(".requests").textContent()) >= 3);
  const top = page.getByRole("table", { name: "Top paths, last hour" });
  assert.equal(await top.locator("tbody tr").first().locator(".path").textContent(), "/");
  await page.locator("#traffic-day .requests").waitFor();
  await shot("09b-traffic");

  step = "settings with a write-only secret";
  await page.getByLabel("Build command").fill("npm run build");
  await page.getByRole("button", { name: "Add variable" }).click();
  const row = page.locator("#env-rows .env-row").last();
  await row.getByLabel("Name").fill("API_KEY");
  await row.getByLabel("Value").fill("k3y-for-the-build");
  await row.getByLabel("secret").check();
  await page.getByRole("button", { name: "Save settings" }).click();
  await page.getByText("Settings saved.").waitFor();
  const saved = page.locator("#env-rows .env-row").last();
  assert.equal(await saved.getByLabel("Name").inputValue(), "API_KEY");
  assert.equal(await saved.getByLabel("Value").inputValue(), "", "secret values are never sent back");
  assert.equal(await page.getByLabel("Build command").inputValue(), "npm run build");
  await shot("10-settings");

  step = "deploy hook";
  await page.getByRole("button", { name: "Create deploy hook" }).click();
  await page.getByText("Deploy hook created.").waitFor();
  const hook = await page.getByLabel(/^Deploy hook URL/).inputValue();
  assert.match(hook, /\/api\/hooks\/deploy\/dash-site\/[A-Za-z0-9]{32}$/);
  await page.getByRole("button", { name: "Revoke deploy hook" }).click();
  await page.getByText("Deploy hook revoked.").waitFor();
  assert.equal(await page.getByLabel(/^Deploy hook URL/).count(), 0);

  step = "custom domains";
  await page.getByLabel(/^Add a domain/).fill("WWW.Dash-Shop.com");
  await page.getByRole("button", { name: "Add domain" }).click();
  await page.getByText("www.dash-shop.com added").waitFor();
  const domains = page.getByRole("list", { name: "Custom domains" });
  await domains.getByText("www.dash-shop.com", { exact: true }).waitFor();
  await domains.locator(".badge.pending_dns").waitFor();
  await page.getByLabel(/^Add a domain/).fill("*.dash-shop.com");
  await page.getByRole("button", { name: "Add domain" }).click();
  await page.getByText(/is a wildcard/).waitFor();
  await shot("10b-domains");
  await page.getByRole("button", { name: "Remove www.dash-shop.com" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Remove" }).click();
  await page.getByText("www.dash-shop.com removed.").waitFor();
  assert.equal(await domains.getByText("www.dash-shop.com", { exact: true }).count(), 0);

  step = "a branch preview";
  execFileSync("git", ["branch", "-f", "feature"], { cwd: REPO_DIR });
  await page.goto(`${GITDEPLOY_URL}/#/`);
  await page.getByLabel("Git repository URL").fill(REPO_URL);
  await page.getByLabel(/^Project/).fill("dash-site");
  await page.getByLabel(/^Branch, tag or commit/).fill("feature");
  await page.getByRole("button", { name: "Deploy" }).click();
  await page.waitForURL((u) => /#\/deployments\/[a-z0-9]{12}$/.test(u.href) && !u.href.endsWith(second));
  const branchBuild = page.url().split("/").pop();
  await page.locator("#site-link").waitFor({ timeout: BUILD_TIMEOUT });
  const alias = await page.locator("#alias-url").getAttribute("href");
  assert.match(alias, /\/\/feature--dash-site\.localhost:\d+\/$/);
  await page.getByRole("button", { name: "Pin", exact: true }).click();
  await page.locator("#pinned", { hasText: "yes" }).waitFor();
  await page.getByRole("button", { name: "Unpin" }).click();
  await page.locator("#pinned", { hasText: "no" }).waitFor();
  await page.goto(`${GITDEPLOY_URL}/#/projects/dash-site`);
  const previews = page.getByRole("list", { name: "Previews" });
  await previews.getByRole("link", { name: alias }).waitFor();
  assert.equal(await previews.getByRole("link", { name: branchBuild }).count(), 1);
  await shot("10d-previews");

  step = "visitor protection";
  await page.getByLabel("Protect").selectOption("previews");
  await page.getByLabel(/^Visitor password/).fill("dashboard password");
  await page.getByLabel(/bypass token/).check();
  await page.getByRole("button", { name: "Protect" }).click();
  await page.getByText("Protection saved.").waitFor();
  assert.match(await page.locator("#protection-state").innerText(), /Previews .* ask for a password; a bypass token is set/);
  assert.match(await page.getByLabel(/^Bypass token/).inputValue(), /^gdb_[A-Za-z0-9]{40}$/);
  await shot("10e-protection");
  // A visitor of the preview: the login page, the password, then the site.
  const visitor = await browser.newContext();
  const guest = await visitor.newPage();
  const first_visit = await guest.goto(alias);
  assert.equal(first_visit.status(), 401);
  await guest.getByRole("heading", { name: "This site is protected" }).waitFor();
  await guest.getByLabel("Password").fill("not the password");
  await guest.getByRole("button", { name: "Continue" }).click();
  await guest.getByText("That password is not right.").waitFor();
  await guest.getByLabel("Password").fill("dashboard password");
  await guest.getByRole("button", { name: "Continue" }).click();
  await guest.locator("h1", { hasText: "version 2" }).waitFor();
  await shot("10f-visitor-signed-in", guest);
  // Production stays public.
  const prodVisit = await guest.goto(production);
  assert.equal(prodVisit.status(), 200);
  await visitor.close();

  step = "notifications";
  await page.reload();
  await page.getByLabel("Webhook URL").fill("http://169.254.169.254/latest/meta-data/");
  await page.getByRole("button", { name: "Add webhook" }).click();
  await page.locator("#notify-form .form-error", { hasText: "not a public address" }).waitFor();
  await page.getByLabel("Webhook URL").fill(HOOK_URL);
  await page.getByRole("button", { name: "Add webhook" }).click();
  await page.getByText("Webhook added.").waitFor();
  assert.match(await page.getByLabel(/^Signing secret/).inputValue(), /^[0-9a-f]{64}$/);
  await page.getByRole("list", { name: "Notification webhooks" }).getByText(HOOK_URL).waitFor();
  // An event: roll back, and the delivery shows in the history.
  await page.getByRole("button", { name: "Roll back" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Roll back" }).click();
  await page.locator("#production-id", { hasText: first }).waitFor();
  for (const deadline = Date.now() + 20000; ; ) {
    const rows = page.getByRole("table", { name: "Deliveries" }).locator("tbody tr", { hasText: "deployment.rolled_back" });
    if (await rows.count() > 0) {
      await rows.first().locator(".badge.delivered").waitFor();
      break;
    }
    assert.ok(Date.now() < deadline, "the delivery never showed");
    await page.waitForTimeout(100);
    await page.reload();
  }
  await shot("10g-notifications");
  await page.locator(`button.promote[data-id="${second}"]`).click();
  await page.getByRole("dialog").getByRole("button", { name: "Promote" }).click();
  await page.locator("#production-id", { hasText: second }).waitFor();

  step = "github";
  await page.getByLabel("GitHub token").fill("github_pat_dashboard");
  await page.getByLabel(/^Repository/).fill("owner/dash");
  await page.getByRole("button", { name: "Connect GitHub" }).click();
  await page.getByText("GitHub connected.").waitFor();
  assert.match(await page.locator("#github-state").innerText(), /Connected to owner\/dash/);
  assert.equal(await page.getByLabel("GitHub token").inputValue(), "", "the token is never sent back");
  await page.getByRole("button", { name: "Disconnect" }).click();
  await page.getByText("GitHub disconnected.").waitFor();
  await page.getByRole("button", { name: "Turn off" }).click();
  await page.getByText("Protection turned off.").waitFor();

  step = "tokens and the audit log";
  await page.getByRole("link", { name: "Tokens" }).click();
  await page.getByRole("heading", { name: "API tokens" }).waitFor();
  await page.getByLabel("Name").fill("ci");
  await page.getByLabel("Scope").selectOption("deploy");
  await page.getByLabel(/^Project/).fill("dash-site");
  await page.getByRole("button", { name: "Create token" }).click();
  const secret = await page.getByLabel("Token ci").inputValue();
  assert.match(secret, /^gdt_[A-Za-z0-9]{40}$/);
  const tokens = page.getByRole("list", { name: "Tokens" });
  await tokens.getByText("ci", { exact: true }).waitFor();
  assert.match(await tokens.locator("li").first().innerText(), /deploy · dash-site only/);
  assert.equal(await tokens.innerText().then((t) => t.includes(secret)), false);
  const audit = page.getByRole("table", { name: "Audit log" });
  await audit.getByText("POST /api/tokens").waitFor();
  await audit.getByText("PATCH /api/projects/dash-site").first().waitFor();
  await shot("10h-tokens");
  await page.getByRole("button", { name: "Revoke ci" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Revoke" }).click();
  await page.getByText("ci revoked.").waitFor();
  assert.equal(await tokens.getByText("ci", { exact: true }).count(), 0);

  step = "projects list";
  await page.getByRole("link", { name: "Projects" }).click();
  await page.getByRole("list", { name: "Projects" }).getByRole("link", { name: "dash-site", exact: true }).waitFor();

  step = "a folder deployment shows its source";
  await page.goto(`${GITDEPLOY_URL}/#/deployments/${FOLDER_ID}`);
  await page.locator("#outcome .banner").waitFor();
  assert.equal(await page.locator("#source").innerText(), "local folder");
  await page.goto(`${GITDEPLOY_URL}/#/`);
  await page.locator(`a[href="#/deployments/${FOLDER_ID}"]`).waitFor();
  const folderRow = page.locator("li.row", { has: page.locator(`a[href="#/deployments/${FOLDER_ID}"]`) });
  assert.match(await folderRow.locator(".source").innerText(), /local folder/);
  await shot("10c-folder-deployment");
  await page.goto(`${GITDEPLOY_URL}/#/deployments/${SOURCE_ID}`);
  await page.locator("#outcome .banner").waitFor();
  assert.equal(await page.locator("#source").innerText(), "local folder (built here)");

  step = "a 375 px wide phone";
  const phone = await browser.newContext({ viewport: { width: 375, height: 740 }, isMobile: true, hasTouch: true });
  await phone.addInitScript((t) => localStorage.setItem("gitdeploy.token", t), API_TOKEN);
  const small = await phone.newPage();
  for (const [name, hash] of [["11-phone-home", "#/"], ["12-phone-deployment", `#/deployments/${first}`],
    ["13-phone-project", "#/projects/dash-site"]]) {
    await small.goto(`${GITDEPLOY_URL}/${hash}`);
    await small.locator("main h1").waitFor();
    if (hash.includes("deployments")) await small.locator("#outcome .banner").waitFor();
    const width = await small.evaluate(() => document.documentElement.scrollWidth);
    const widest = await small.evaluate(() => [...document.querySelectorAll("main *")]
      .filter((e) => e.getBoundingClientRect().right > 375).map((e) => e.outerHTML.slice(0, 80)).slice(-3));
    assert.ok(width <= 375, `${hash} is ${width}px wide at 375px: ${JSON.stringify(widest)}`);
    await shot(name, small);
  }
  await phone.close();

  step = "delete a deployment";
  await page.goto(`${GITDEPLOY_URL}/#/projects/dash-site`);
  await page.locator(`button.delete[data-id="${first}"]`).click();
  await page.getByRole("dialog").getByRole("button", { name: "Delete" }).click();
  await page.getByText("Delete: done.").waitFor();
  assert.equal(await page.locator(`button.promote[data-id="${first}"]`).count(), 0);
  assert.equal(await page.locator(`a[href="#/deployments/${first}"]`).count(), 0);
  assert.equal(await page.locator(`button.delete[data-id="${second}"]`).count(), 0, "production cannot be deleted");

  step = "no console errors";
  // The refused token (401), the refused repository and webhook URL (400) and the protected
  // preview's login page (401) are expected answers.
  const expected = /^Failed to load resource: the server responded with a status of 40[01] /;
  assert.deepEqual(consoleErrors.filter((e) => !expected.test(e)), []);
  console.log(`dashboard ok: deployed ${first} and ${second}, rolled back and promoted`);
} catch (err) {
  console.error(`dashboard test failed at step "${step}": ${err.stack || err}`);
  console.error(`console errors: ${JSON.stringify(consoleErrors)}`);
  await page?.screenshot({ path: `${ARTIFACTS}/failure.png`, fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
