// The OpenID provider the end-to-end tests sign in against: oidc-provider,
// configured from the environment by the test support (tests/src/oidc.rs).
//
//   PORT, ISSUER            where it listens and the issuer URL it announces
//   TLS_CERT, TLS_KEY       PEM files for HTTPS
//   SIGNING_KEYS            comma-separated PEM private keys (RSA → RS256, EC → ES256)
//   KEY_IDS                 comma-separated kid for each key
//   REDIRECT_URI            the loopback redirect URI of the test clients
//   KEYS_WITHOUT_ALG        when set, the JWKS keys carry no `alg`
//
// Clients: `kubernetes` (ID tokens RS256) and `kubernetes-es` (ES256), both
// public with PKCE. Accounts: any login name; groups by name (see GROUPS).
// Test-only endpoints: GET /test/jwks-count answers how often /jwks was served;
// GET /test/claims/<account> answers that account's groups as a JWT signed with
// the first signing key (a distributed claims source). Accounts named
// `dist-*` get their groups as a distributed claim (`_claim_names` /
// `_claim_sources` pointing there) instead of in the ID token; `dist-bad-*`
// point at a source whose JWT is signed by a key the issuer never published.
import fs from 'node:fs';
import https from 'node:https';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const GROUPS = { alice: ['devs'], bob: [], carol: ['devs', 'ops'], 'dist-dave': ['devs', 'remote'] };

const b64url = (value) => Buffer.from(value).toString('base64url');
// A compact JWS over `claims` with `pem` (RS256 or ES256 by key type).
const signJwt = (claims, pem, kid) => {
  const key = crypto.createPrivateKey(pem);
  const rsa = key.asymmetricKeyType === 'rsa';
  const header = b64url(JSON.stringify({ alg: rsa ? 'RS256' : 'ES256', kid, typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const input = `${header}.${payload}`;
  const signature = crypto.sign('sha256', Buffer.from(input), rsa ? key : { key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${signature.toString('base64url')}`;
};
const firstKeyPem = fs.readFileSync(env('SIGNING_KEYS').split(',')[0]);
// A key of its own, never published: sources signed with it must be refused.
const strangerPem = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' });

const kids = env('KEY_IDS').split(',');
const keys = env('SIGNING_KEYS').split(',').map((file, i) => {
  const jwk = crypto.createPrivateKey(fs.readFileSync(file)).export({ format: 'jwk' });
  // KEYS_WITHOUT_ALG=1 publishes the keys without `alg` (optional in RFC 7517).
  const alg = process.env.KEYS_WITHOUT_ALG ? undefined : (jwk.kty === 'RSA' ? 'RS256' : 'ES256');
  return { ...jwk, kid: kids[i], use: 'sig', alg };
});

const client = (id, alg) => ({
  client_id: id,
  application_type: 'native',
  token_endpoint_auth_method: 'none',
  redirect_uris: [env('REDIRECT_URI')],
  grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
  response_types: ['code'],
  id_token_signed_response_alg: alg,
});

const provider = new Provider(env('ISSUER'), {
  clients: [client('kubernetes', 'RS256'), client('kubernetes-es', 'ES256')],
  jwks: { keys },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  scopes: ['openid', 'email', 'groups', 'offline_access'],
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true }, deviceFlow: { enabled: true } },
  pkce: { required: () => true },
  ttl: { IdToken: 3600, AccessToken: 3600 },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => (id.startsWith('dist-')
      ? {
        sub: id,
        email: `${id}@example.com`,
        email_verified: true,
        _claim_names: { groups: 'src1' },
        _claim_sources: { src1: { endpoint: `${env('ISSUER')}/test/claims/${id}` } },
      }
      : {
        sub: id,
        email: `${id}@example.com`,
        email_verified: true,
        groups: GROUPS[id] ?? ['viewers'],
      }),
  }),
});

let jwksServed = 0;
provider.use(async (ctx, next) => {
  if (ctx.path === '/test/jwks-count') {
    ctx.body = { count: jwksServed };
    return;
  }
  if (ctx.path.startsWith('/test/claims/')) {
    const id = decodeURIComponent(ctx.path.slice('/test/claims/'.length));
    const now = Math.floor(Date.now() / 1000);
    // kube-apiserver verifies the source's JWT as an ID token: it must name
    // the configured audience (the tests' client, kubernetes).
    const claims = { iss: env('ISSUER'), aud: 'kubernetes', sub: id, groups: GROUPS[id] ?? GROUPS['dist-dave'], iat: now, exp: now + 3600 };
    ctx.type = 'application/jwt';
    ctx.body = id.startsWith('dist-bad-')
      ? signJwt(claims, strangerPem, kids[0])
      : signJwt(claims, firstKeyPem, kids[0]);
    return;
  }
  if (ctx.path === '/jwks') jwksServed += 1;
  await next();
});

const server = https.createServer(
  { cert: fs.readFileSync(env('TLS_CERT')), key: fs.readFileSync(env('TLS_KEY')) },
  provider.callback(),
);
server.listen(Number(env('PORT')), '127.0.0.1', () => {
  console.log(`oidc-provider ready at ${env('ISSUER')}`);
});

provider.on('server_error', (ctx, error) => console.error('server_error', ctx.path, error));
