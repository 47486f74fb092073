import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
catalog = rs.bandset_catalog()
catalog.create_bandset(["$DATA/s2", "S2_"], wavelengths=["Sentinel-2"], bandset_number=1)
bandset = catalog.get_bandset(1)
print(bandset.bands["name"])
print([round(float(w), 3) for w in bandset.bands["wavelength"]])
print(catalog.get_band_count(1))
rs.close()
