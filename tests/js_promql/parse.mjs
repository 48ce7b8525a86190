// Parse PromQL expressions (JSON array on stdin) with Prometheus' own lezer grammar; print, per
// expression, the error positions (empty: it parses) and the metric names it selects.
import { parser } from "@prometheus-io/lezer-promql";
let input = "";
for await (const chunk of process.stdin) input += chunk;
const out = JSON.parse(input).map((expr) => {
  const tree = parser.parse(expr);
  const errors = [], metrics = [];
  tree.iterate({
    enter(node) {
      if (node.type.isError) errors.push(node.from);
      if (node.name === "Identifier" && node.node.parent && node.node.parent.name === "VectorSelector")
        metrics.push(expr.slice(node.from, node.to));
    },
  });
  return { expr, errors, metrics };
});
process.stdout.write(JSON.stringify(out));
