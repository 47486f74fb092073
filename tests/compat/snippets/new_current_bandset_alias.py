import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
catalog = rs.bandset_catalog()
catalog.create_bandset(["$DATA/s2", "S2_"], wavelengths=["Sentinel-2"], bandset_number=1)
output = rs.band_calc(
    output_path="$DATA/out/new_current_bandset_alias/ndvi.tif",
    expression_string='("bandset#b4" - "bandset#b3") / ("bandset#b4" + "bandset#b3")',
    bandset_catalog=catalog,
    bandset_number=1,
)
print(output.check)
print(output.paths)
rs.close()
