// Closed- or rate-limited HTTP load on /recommendations with autocannon (npm), for tests/benchmarks/bench_serve.py.
// node serve_load.js OPTIONS.json: {"url", "paths": [...], "connections", "duration", "rate" (0: as fast as answered)}
// Prints autocannon's result object as one line of JSON (latencies in ms).
'use strict'
const fs = require('fs')
const autocannon = require('autocannon')

const opts = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
let next = 0
const config = {
  url: opts.url,
  connections: opts.connections,
  duration: opts.duration,
  requests: [{ setupRequest: (req) => { req.path = opts.paths[next++ % opts.paths.length]; return req } }]
}
if (opts.rate) config.overallRate = opts.rate
autocannon(config, (err, result) => {
  if (err) { console.error(err); process.exit(1) }
  process.stdout.write(JSON.stringify(result) + '\n')
})
