// A local stand-in for the Hugging Face Hub, speaking the endpoints graft's client uses as the Hub answers
// them: the revision API (/api/models/{repo}/revision/{rev}: sha, siblings; and the tree API that
// huggingface_hub's snapshot_download reads), HEAD and GET of
// /{repo}/resolve/{rev}/{path} (plain git files answered directly with their git blob id as ETag; LFS files
// redirected with 302 to a second server playing the CDN, with X-Linked-Etag / X-Linked-Size /
// X-Repo-Commit), Range requests (206), and the Hub's errors (401/403 GatedRepo, 401/404 RepoNotFound,
// 404 RevisionNotFound / EntryNotFound with X-Error-Code). Faults are injected per file: the connection cut
// after N bytes, wrong bytes, a stall. Every request is logged.
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeRepo {
  id: string;
  files: Record<string, Buffer | string>;
  /** Resolve needs a token from `tokens` (the metadata stays public, as on the Hub). */
  gated?: boolean;
  /** Everything needs a token from `tokens`. */
  private?: boolean;
  /** Branch or tag -> commit; main is always the repo's commit. */
  refs?: Record<string, string>;
}

export interface LoggedRequest {
  method: string;
  path: string;
  host: string;
  range?: string;
  authorization?: string;
}

export interface Fault {
  /** Cut the connection after this many bytes of the body. */
  cutAfter?: number;
  /** Stop sending after this many bytes, and keep the connection open. */
  stallAfter?: number;
  /** Send these bytes changed (same length). */
  corrupt?: boolean;
  /** Answer a Range request with the whole file (200), as a server without range support does. */
  ignoreRange?: boolean;
  /** Answer with this HTTP status and no bytes (403: a CDN link whose signature expired). */
  status?: number;
  /** Send this many bytes more than the file has. */
  extraBytes?: number;
  /** How many requests the fault applies to (default 1). */
  times?: number;
}

export const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
export const gitBlobId = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
const commitOf = (id: string) => createHash('sha1').update(`commit of ${id}`).digest('hex');

/** Stored in LFS on the Hub (and so redirected to the CDN): weights, and anything over 10 kB. */
const isLfs = (path: string, data: Buffer) => /\.(safetensors|bin|model|jpg|jpeg|png)$/.test(path) || data.length > 10_000;

export class FakeHub {
  readonly requests: LoggedRequest[] = [];
  readonly faults = new Map<string, Fault>();
  /** Tokens with access to gated and private repos. */
  tokens = new Set<string>();
  /** Old repo id -> new one: the Hub redirects (307, to itself) from a renamed repo. */
  readonly renamed = new Map<string, string>();
  /** Headers left out of resolve answers (as a proxy or a non-Hub server would). */
  readonly dropHeaders = new Set<string>();
  private repos = new Map<string, { spec: FakeRepo; commit: string; files: Map<string, Buffer> }>();
  private hub!: Server;
  private cdn!: Server;
  url = '';
  cdnUrl = '';

  add(spec: FakeRepo): { commit: string } {
    const files = new Map(Object.entries(spec.files).map(([k, v]) => [k, Buffer.isBuffer(v) ? v : Buffer.from(v)]));
    const commit = commitOf(spec.id);
    this.repos.set(spec.id, { spec, commit, files });
    return { commit };
  }

  file(repo: string, path: string): Buffer {
    return this.repos.get(repo)!.files.get(path)!;
  }

  /** The blob name the Hub gives a file (its ETag). */
  etag(repo: string, path: string): string {
    const data = this.file(repo, path);
    return isLfs(path, data) ? sha256(data) : gitBlobId(data);
  }

  async start(): Promise<this> {
    const listen = (s: Server) => new Promise<string>((r) => s.listen(0, '127.0.0.1', () => r(`http://127.0.0.1:${(s.address() as AddressInfo).port}`)));
    this.hub = createServer((q, s) => this.handle(q, s, false));
    this.cdn = createServer((q, s) => this.handle(q, s, true));
    [this.url, this.cdnUrl] = await Promise.all([listen(this.hub), listen(this.cdn)]);
    // Another host name, as the Hub's CDN has: clients follow redirects within the Hub's host, not to the CDN.
    this.cdnUrl = this.cdnUrl.replace('127.0.0.1', 'localhost');
    return this;
  }

  async stop(): Promise<void> {
    for (const s of [this.hub, this.cdn]) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  }

  /** Requests for a repo path (through resolve or the CDN), by method. */
  fetched(path: string, method = 'GET'): LoggedRequest[] {
    return this.requests.filter((r) => r.method === method && r.path.endsWith(`/${path}`));
  }

  private authorized(q: IncomingMessage): boolean {
    const m = /^Bearer (.+)$/.exec(q.headers.authorization ?? '');
    return m !== null && this.tokens.has(m[1]!);
  }

  private error(s: ServerResponse, status: number, code: string | undefined, message: string): void {
    s.writeHead(status, { 'content-type': 'application/json', ...(code ? { 'x-error-code': code } : {}), 'x-error-message': message });
    s.end(JSON.stringify({ error: message }));
  }

  private handle(q: IncomingMessage, s: ServerResponse, isCdn: boolean): void {
    const url = new URL(q.url ?? '/', 'http://x');
    const path = decodeURIComponent(url.pathname);
    this.requests.push({ method: q.method ?? 'GET', path, host: q.headers.host ?? '', range: q.headers.range, authorization: q.headers.authorization });
    if (isCdn) {
      const m = /^\/cdn\/([^/]+)\/(.+)$/.exec(path);
      const repo = m ? [...this.repos.values()].find((r) => r.spec.id === m[1]!.replace('--', '/')) : undefined;
      const data = repo?.files.get(m![2]!);
      if (!repo || !data) return this.error(s, 404, undefined, 'NoSuchKey');
      return this.sendBytes(q, s, data, m![2]!, { etag: `"${sha256(data)}"` });
    }
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/(.+)$/.exec(path);
    // huggingface_hub's snapshot_download lists files through the tree API (graft's client does not).
    const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(path);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    const repoId = api?.[1] ?? tree?.[1] ?? resolve?.[1];
    const newId = repoId ? this.renamed.get(repoId) : undefined;
    if (newId) {
      s.writeHead(307, { location: `${this.url}${url.pathname.replace(repoId!, newId)}${url.search}` });
      s.end();
      return;
    }
    const repo = repoId ? this.repos.get(repoId) : undefined;
    if (!repoId) return this.error(s, 404, undefined, 'Not Found');
    if (!repo || (repo.spec.private && !this.authorized(q))) {
      // The Hub answers 401 to an anonymous request for a repo it will not show, 404 to a logged-in one.
      return this.error(s, q.headers.authorization ? 404 : 401, 'RepoNotFound', 'Repository not found');
    }
    const rev = api?.[2] ?? tree?.[2] ?? resolve![2]!;
    const commit = rev === 'main' || rev === repo.commit ? repo.commit : repo.spec.refs?.[rev];
    if (!commit) return this.error(s, 404, 'RevisionNotFound', `Invalid rev id: ${rev}`);
    if (api) {
      s.writeHead(200, { 'content-type': 'application/json' });
      s.end(JSON.stringify({
        _id: 'x', id: repo.spec.id, sha: commit, private: !!repo.spec.private, gated: repo.spec.gated ? 'manual' : false,
        downloads: 0, likes: 0, lastModified: '2024-08-16T00:00:00.000Z', siblings: [...repo.files.keys()].map((rfilename) => ({ rfilename })),
      }));
      return;
    }
    if (tree) {
      s.writeHead(200, { 'content-type': 'application/json' });
      s.end(JSON.stringify([...repo.files].map(([p, d]) => ({
        type: 'file', path: p, size: d.length, oid: gitBlobId(d), ...(isLfs(p, d) ? { lfs: { oid: sha256(d), size: d.length, pointerSize: 134 } } : {}),
      }))));
      return;
    }
    if (repo.spec.gated && !this.authorized(q)) {
      return q.headers.authorization
        ? this.error(s, 403, 'GatedRepo', `Access to model ${repo.spec.id} is restricted and you are not in the authorized list. Visit https://huggingface.co/${repo.spec.id} to ask for access.`)
        : this.error(s, 401, 'GatedRepo', `Access to model ${repo.spec.id} is restricted. You must have access to it and be authenticated to access it. Please log in.`);
    }
    const file = resolve![3]!;
    const data = repo.files.get(file);
    if (!data) return this.error(s, 404, 'EntryNotFound', `${file} does not exist on "${rev}"`);
    const common = { 'x-repo-commit': commit };
    if (isLfs(file, data)) {
      this.writeHead(s, 302, {
        ...common, location: `${this.cdnUrl}/cdn/${repo.spec.id.replace('/', '--')}/${file}?X-Amz-Signature=fake`,
        'x-linked-etag': `"${sha256(data)}"`, 'x-linked-size': String(data.length), etag: `"${gitBlobId(Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha256(data)}\n`))}"`,
        'content-length': '0',
      });
      s.end();
      return;
    }
    this.sendBytes(q, s, data, file, { ...common, etag: `"${gitBlobId(data)}"` });
  }

  private writeHead(s: ServerResponse, status: number, headers: Record<string, string>): void {
    for (const h of this.dropHeaders) delete headers[h];
    s.writeHead(status, headers);
  }

  private sendBytes(q: IncomingMessage, s: ServerResponse, data: Buffer, file: string, headers: Record<string, string>): void {
    const fault = this.faults.get(file);
    if (fault && q.method === 'GET') {
      fault.times = (fault.times ?? 1) - 1;
      if (fault.times <= 0) this.faults.delete(file);
    }
    if (fault?.status && q.method === 'GET') return this.error(s, fault.status, undefined, 'Request has expired');
    let body = data;
    if (fault?.corrupt && q.method === 'GET') {
      body = Buffer.from(data);
      body[body.length >> 1] ^= 0xff;
    }
    if (fault?.extraBytes && q.method === 'GET') body = Buffer.concat([data, Buffer.alloc(fault.extraBytes, 7)]);
    const range = /^bytes=(\d+)-$/.exec(q.headers.range ?? '');
    let status = 200;
    const h: Record<string, string> = { ...headers, 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream' };
    if (range && !fault?.ignoreRange) {
      const start = Number(range[1]);
      if (start >= data.length) {
        s.writeHead(416, { 'content-range': `bytes */${data.length}` });
        s.end();
        return;
      }
      status = 206;
      h['content-range'] = `bytes ${start}-${data.length - 1}/${data.length}`;
      body = body.subarray(start);
    }
    h['content-length'] = String(body.length);
    this.writeHead(s, status, h);
    if (q.method === 'HEAD') { s.end(); return; }
    if (fault?.cutAfter !== undefined) {
      s.write(body.subarray(0, fault.cutAfter), () => setTimeout(() => s.socket?.destroy(), 20));
      return;
    }
    if (fault?.stallAfter !== undefined) {
      s.write(body.subarray(0, fault.stallAfter));
      return;
    }
    s.end(body);
  }
}
