// A Node.js client of rsgrpc: opens a session, runs an NDVI band calc,
// follows the operation with WatchOperation until it is done, prints a JSON
// summary on stdout and closes the session. Exits non-zero on any failure.
//
//   node band_calc.mjs --target 127.0.0.1:50051 \
//     --nir s2/nir.tif --red s2/red.tif --output out/ndvi.tif
//
// Paths are relative to the server's data root. The protos are read from the
// repository's `protos/` folder (or `--protos DIR`).

import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const EXPRESSION = '("nir" - "red") / ("nir" + "red")';
const METADATA_TYPE = "rsgrpc.v1.OperationMetadata";
const RESPONSE_TYPE = "rsgrpc.v1.BandCalcResponse";

function parseCommandLine() {
  const { values } = parseArgs({
    options: {
      target: { type: "string", default: "127.0.0.1:50051" },
      nir: { type: "string" },
      red: { type: "string" },
      output: { type: "string" },
      protos: { type: "string", default: path.resolve(HERE, "..", "..", "protos") },
      "deadline-seconds": { type: "string", default: "100" },
    },
    strict: true,
  });
  for (const name of ["nir", "red", "output"]) {
    if (!values[name]) throw new Error(`--${name} is required`);
  }
  return values;
}

function loadProtos(protosDir) {
  const definition = protoLoader.loadSync(
    ["session.proto", "raster.proto", "operation.proto"].map((file) =>
      path.join(protosDir, "rsgrpc", "v1", file),
    ),
    {
      includeDirs: [protosDir, path.join(protosDir, "third_party")],
      keepCase: true,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
      // Expands each google.protobuf.Any whose type is loaded into
      // {"@type": ..., ...fields}: the operation's metadata and response.
      json: true,
    },
  );
  return grpc.loadPackageDefinition(definition).rsgrpc.v1;
}

function typeName(any) {
  const url = any?.["@type"] ?? any?.type_url ?? "";
  return url.slice(url.lastIndexOf("/") + 1);
}

/** The decoded message in an Any, or an error if it is not of `expected`. */
function unpack(any, expected) {
  if (typeName(any) !== expected || !("@type" in any)) {
    throw new Error(`expected an Any holding ${expected}, got ${JSON.stringify(any)}`);
  }
  return any;
}

function describe(method, error) {
  const code = grpc.status[error.code] ?? error.code;
  return new Error(`${method}: ${code}: ${error.details || error.message}`);
}

function unary(client, method, request, deadlineSeconds) {
  const deadline = new Date(Date.now() + deadlineSeconds * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (error, response) => {
      if (error) reject(describe(method, error));
      else resolve(response);
    });
  });
}

/** Every operation WatchOperation sends, until the stream ends. */
function watch(client, name, deadlineSeconds) {
  const deadline = new Date(Date.now() + deadlineSeconds * 1000);
  return new Promise((resolve, reject) => {
    const updates = [];
    const call = client.WatchOperation({ name }, { deadline });
    call.on("data", (operation) => updates.push(operation));
    call.on("error", (error) => reject(describe("WatchOperation", error)));
    call.on("end", () => resolve(updates));
  });
}

function summarize(session, operation, updates) {
  const metadata = unpack(operation.metadata, METADATA_TYPE);
  const summary = {
    session,
    operation: operation.name,
    done: operation.done,
    error: null,
    stage: metadata.stage,
    tiles_done: Number(metadata.tiles_done),
    tiles_total: Number(metadata.tiles_total),
    updates: updates.length,
    output_path: null,
    statistics: null,
  };
  if (operation.result === "error") {
    const { code, message } = operation.error;
    summary.error = { code, status: grpc.status[code] ?? null, message };
  } else if (operation.result === "response") {
    const response = unpack(operation.response, RESPONSE_TYPE);
    summary.output_path = response.output_path;
    const stats = response.statistics;
    summary.statistics = {
      valid_pixel_count: Number(stats.valid_pixel_count),
      nodata_pixel_count: Number(stats.nodata_pixel_count),
      minimum: stats.minimum,
      maximum: stats.maximum,
      mean: stats.mean,
    };
  }
  return summary;
}

async function main() {
  const args = parseCommandLine();
  const deadlineSeconds = Number(args["deadline-seconds"]);
  const v1 = loadProtos(args.protos);
  const credentials = grpc.credentials.createInsecure();
  const sessions = new v1.SessionService(args.target, credentials);
  const raster = new v1.RasterService(args.target, credentials, {
    channelOverride: sessions.getChannel(),
  });
  const watcher = new v1.OperationWatchService(args.target, credentials, {
    channelOverride: sessions.getChannel(),
  });

  const session = await unary(
    sessions,
    "CreateSession",
    { session: { process_count: 1, available_ram_mib: 1024 } },
    deadlineSeconds,
  );
  let summary;
  try {
    const started = await unary(
      raster,
      "BandCalc",
      {
        session: session.name,
        expression: EXPRESSION,
        inputs: [
          { name: "nir", path: args.nir, band: 1 },
          { name: "red", path: args.red, band: 1 },
        ],
        output_path: args.output,
        overwrite: true,
      },
      deadlineSeconds,
    );
    const updates = await watch(watcher, started.name, deadlineSeconds);
    if (updates.length === 0) throw new Error("WatchOperation sent nothing");
    summary = summarize(session.name, updates[updates.length - 1], updates);
  } finally {
    await unary(sessions, "DeleteSession", { name: session.name }, deadlineSeconds);
    sessions.close();
  }
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  if (!summary.done) throw new Error(`${summary.operation} is not done`);
  if (summary.error) {
    const { status, code, message } = summary.error;
    throw new Error(`${summary.operation} failed: ${status ?? code}: ${message}`);
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`band_calc.mjs: ${error.stack || error}\n`);
    process.exit(1);
  },
);
