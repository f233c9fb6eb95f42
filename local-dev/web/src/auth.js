// Sign-in for the reference page. Locally: the dev OIDC stand-in mints a token (POST {sub, roles}),
// which is for local development only. In an app: take the access token from your OIDC client
// (e.g. Keycloak's) and hand it to DropgateApi's getToken; nothing else here changes.

const STORAGE_KEY = 'dropgate.session'

function claimsOf(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')
    return JSON.parse(atob(payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), '=')))
  } catch {
    return null
  }
}

export class Session {
  constructor(storage = sessionStorage) {
    this.storage = storage
    this.token = null
    this.user = null
    const saved = storage.getItem(STORAGE_KEY)
    if (saved) {
      try {
        const { token } = JSON.parse(saved)
        this.#use(token)
      } catch {
        storage.removeItem(STORAGE_KEY)
      }
    }
  }

  get signedIn() {
    return this.token !== null
  }

  #use(token) {
    const claims = claimsOf(token)
    if (!claims?.sub || (claims.exp && claims.exp * 1000 < Date.now() + 10_000)) {
      this.signOut()
      return false
    }
    this.token = token
    this.user = claims.preferred_username ?? claims.sub
    this.storage.setItem(STORAGE_KEY, JSON.stringify({ token }))
    return true
  }

  /** A token from the local dev OIDC (local development only). */
  async devSignIn(tokenUrl, user, roles = ['uploader']) {
    let response
    try {
      response = await fetch(tokenUrl, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ sub: user, roles }),
      })
    } catch {
      throw new Error('The local sign-in service cannot be reached. Is the local stack running?')
    }
    const answer = await response.json().catch(() => ({}))
    if (!response.ok || !answer.access_token) {
      throw new Error(`Sign-in was refused: ${answer.detail ?? response.statusText}`)
    }
    this.#use(answer.access_token)
  }

  /** Any token the API trusts (e.g. copied from your identity provider). */
  useToken(token) {
    if (!this.#use(token.trim())) throw new Error('That token is malformed or has expired.')
  }

  /**
   * The token as the `dropgate_token` cookie, for presign served under this page's origin at `path`
   * (Companion mode: the plugin sends no Authorization header). An app's server sets it instead,
   * HttpOnly; this page can only set it from script. SameSite=Strict, and presign also requires the
   * request to come from this site's own pages.
   */
  setCookie(path) {
    const secure = location.protocol === 'https:' ? '; Secure' : ''
    const expires = claimsOf(this.token)?.exp
    const maxAge = expires ? `; Max-Age=${Math.max(0, expires - Math.floor(Date.now() / 1000))}` : ''
    document.cookie = `dropgate_token=${this.token}; Path=${path}; SameSite=Strict${maxAge}${secure}`
  }

  clearCookie(path) {
    document.cookie = `dropgate_token=; Path=${path}; SameSite=Strict; Max-Age=0`
  }

  signOut() {
    this.token = null
    this.user = null
    this.storage.removeItem(STORAGE_KEY)
  }
}
