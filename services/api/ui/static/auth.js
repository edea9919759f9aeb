// The API key lives in sessionStorage: it survives a reload but not closing the tab.
const STORAGE_KEY = 'kbingest.apiKey';

export function loadKey() {
  try {
    return sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

export function saveKey(key) {
  sessionStorage.setItem(STORAGE_KEY, key);
}

export function clearKey() {
  sessionStorage.removeItem(STORAGE_KEY);
}
