// The official JavaScript client (@clickhouse/client) against a ClickHouse HTTP endpoint.
// Usage: node query.mjs URL USER PASSWORD  (or CLICKHOUSE_URL, CLICKHOUSE_USER, CLICKHOUSE_PASSWORD)
// Prints one JSON object with what each call returned; tests/integration/test_query_endpoint.py
// compares it with the same queries run directly on chDB.
import { ClickHouseLogLevel, createClient } from '@clickhouse/client'

const [url, username, password] = [
  process.argv[2] ?? process.env.CLICKHOUSE_URL,
  process.argv[3] ?? process.env.CLICKHOUSE_USER,
  process.argv[4] ?? process.env.CLICKHOUSE_PASSWORD,
]
const client = createClient({
  url, username, password,
  compression: { response: true, request: false },
  log: { level: ClickHouseLogLevel.OFF }, // refused statements are expected here; the caller checks them
})
const out = {}
try {
  out.ping = await client.ping()
  const cities = await client.query({
    query: 'SELECT city, count() AS events, min(occurred_at) AS first FROM ledger_events ' +
      'WHERE channel = {channel:String} GROUP BY city ORDER BY city',
    format: 'JSONEachRow',
    query_params: { channel: 'phone' },
  })
  out.cities = await cities.json()
  const proposals = await client.query({
    query: 'SELECT proposal_id, basis, requires_approval, event_id FROM tier_proposals ' +
      'WHERE basis >= {min:Decimal(14, 2)} ORDER BY proposal_id LIMIT 20',
    format: 'JSONEachRow',
    query_params: { min: '100.00' },
  })
  out.proposals = await proposals.json()
  try {
    await client.command({ query: "INSERT INTO ledger_events (customer_id) VALUES ('js')" })
    out.insert = { refused: false }
  } catch (err) {
    out.insert = { refused: true, code: err.code, type: err.type, message: err.message }
  }
  try {
    await client.command({ query: 'KILL QUERY WHERE 1' })
    out.kill = { refused: false }
  } catch (err) {
    out.kill = { refused: true, code: err.code, type: err.type }
  }
} finally {
  await client.close()
}
process.stdout.write(JSON.stringify(out) + '\n')
