/**
 * zod/mini ships without messages; only the English locale is loaded (importing `z.locales` would pull in
 * every language). Imported for its effect by the schema modules.
 */
import * as z from "zod/mini";
import en from "zod/v4/locales/en.js";

z.config(en());
