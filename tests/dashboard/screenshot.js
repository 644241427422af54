// Opens Eddy's dashboard in headless Chromium (Debian's, driven by playwright-core), waits
// until it has drawn the expected views and polled twice (so rates are shown), then prints
// what a user sees as JSON and saves a screenshot.
//
//   node tests/dashboard/screenshot.js URL OUT.png VIEWS SUBSCRIPTIONS
//
// VIEWS: comma-separated materialized views that must be drawn; SUBSCRIPTIONS: how many rows
// the subscriptions table must show.
const { chromium } = require("playwright-core");

async function main() {
  const [url, out, views, subscriptions] = process.argv.slice(2);
  const expected = views.split(",");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    page.on("pageerror", e => errors.push(String(e)));
    page.on("console", m => { if (m.type() === "error") errors.push(m.text()); });
    await page.goto(url);
    await page.waitForFunction(([views, subs]) => {
      const polls = Number(document.body.dataset.polls || 0);
      const drawn = views.every(v => document.querySelector(`svg.graph[data-view="${v}"] g.op`));
      const rows = document.querySelectorAll("#subscriptions tbody tr").length;
      // Rates need two polls; a moving counter shows as "/s" with a non-zero rate.
      const moving = [...document.querySelectorAll("svg.graph text.rate")]
        .some(t => /in [1-9][0-9.,]*k?\/s/.test(t.textContent));
      return polls >= 2 && drawn && rows >= subs && moving;
    }, [expected, Number(subscriptions)], { timeout: 60000, polling: 200 });
    const seen = await page.evaluate(() => ({
      title: document.title,
      status: document.getElementById("status").textContent,
      views: [...document.querySelectorAll(".card.view")].map(card => ({
        name: card.dataset.view,
        badge: card.querySelector(".badge").textContent,
        stats: card.querySelector(".stats").textContent,
        operators: [...card.querySelectorAll("g.op")].map(g => ({
          name: g.querySelector("text.name").textContent,
          rate: g.querySelector("text.rate").textContent,
          state: g.querySelector("text.state").textContent,
        })),
        edges: card.querySelectorAll("path.edge").length,
      })),
      sources: [...document.querySelectorAll("#sources tbody tr")].map(r => r.textContent),
      subscriptions: [...document.querySelectorAll("#subscriptions tbody tr")]
        .map(r => [...r.children].map(td => td.textContent)),
    }));
    await page.screenshot({ path: out, fullPage: false });
    seen.errors = errors;
    console.log(JSON.stringify(seen));
  } finally {
    await browser.close();
  }
}

main().catch(e => { console.error(e); process.exit(1); });
