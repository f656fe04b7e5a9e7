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
// Test-only endpoint: GET /test/jwks-count answers how often /jwks was served.
import fs from 'node:fs';
import https from 'node:https';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const GROUPS = { alice: ['devs'], bob: [], carol: ['devs', 'ops'] };

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
    claims: async () => ({
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
