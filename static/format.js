// Words and numbers for the page: usage, cost and age.

const count = new Intl.NumberFormat("en");
const ages = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
const STEPS = [
  [60, "second"],
  [60, "minute"],
  [24, "hour"],
  [Infinity, "day"],
];

function isUsage(usage) {
  return Boolean(usage) && typeof usage === "object" && Number.isFinite(usage.llm_calls);
}

// "$0.0416", "$0.00", or "" when the model has no known price.
export function costText(usage) {
  if (!isUsage(usage) || typeof usage.cost_usd !== "number") return "";
  const digits = usage.cost_usd > 0 && usage.cost_usd < 0.01 ? 4 : 2;
  return `$${usage.cost_usd.toFixed(digits)}`;
}

// One line for a job's usage, or "" when the server reports none.
export function usageText(usage) {
  if (!isUsage(usage)) return "";
  const calls = usage.llm_calls === 1 ? "1 LLM call" : `${count.format(usage.llm_calls)} LLM calls`;
  const tokens = Number(usage.input_tokens || 0) + Number(usage.output_tokens || 0);
  const parts = [
    calls,
    `${count.format(tokens)} tokens (${count.format(usage.input_tokens || 0)} in, ` +
      `${count.format(usage.output_tokens || 0)} out)`,
    costText(usage) ? `cost ${costText(usage)}` : "cost unknown for this model",
  ];
  return parts.join(" · ");
}

// "3 minutes ago" for an ISO time, against `now` (ms).
export function ageText(iso, now) {
  const then = Date.parse(iso);
  if (!Number.isFinite(then)) return "";
  let amount = Math.max(0, (now - then) / 1000);
  for (const [size, unit] of STEPS) {
    if (amount < size) return ages.format(-Math.floor(amount), unit);
    amount /= size;
  }
  return "";
}
